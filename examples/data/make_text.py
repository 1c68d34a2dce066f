"""Generate the bundled ``text`` corpus: the shop's product-care handbook, for continued pre-training.

Why this exists: continued pre-training (method.kind cpt) needs raw text in one domain that a small
model does not already know by heart. This is the handbook of the fictional shop behind the
``orders`` data: one short paragraph per fact (material, washing, drying, storage, repair, sizing,
colour care, gifting) for each of its 25 products, plus the shop's own policies. The facts are
written by hand below; the script only varies the phrasing, so after training the held-out
paragraphs (other phrasings of the same facts) should be much less surprising to the model.

Writes (deterministic)::

    text/train.jsonl   {"text": ...} paragraphs
    text/eval.jsonl    held-out paragraphs (every 8th)

Usage::

    python examples/data/make_text.py
"""

import json
import random
from pathlib import Path

SEED = 97
OUT_DIR = Path(__file__).resolve().parent / "text"
SHOP = "Marrow & Finch"

# item: (material, washing, drying, storage, repair, detail)
PRODUCTS: dict[str, tuple[str, str, str, str, str, str]] = {
    "t-shirt": ("combed organic cotton, 180 gsm", "machine wash at 30 degrees, inside out",
                "line dry in the shade", "fold, never hang, so the shoulders keep their shape",
                "small holes can be darned with the spare thread in the care pouch",
                "the neck rib is double-stitched"),
    "mug": ("stoneware fired at 1240 degrees", "dishwasher safe on the eco cycle",
            "air dry upside down", "stack no more than four high",
            "a chipped rim should not be used; send a photo for a replacement",
            "the glaze is lead-free and food safe"),
    "backpack": ("waxed canvas with a recycled nylon lining", "spot clean with a damp cloth only",
                 "dry open and unbuckled", "stuff with paper when stored so it keeps its form",
                 "re-wax once a year with the bar we sell for the purpose", "the zips are YKK brass"),
    "lamp": ("spun aluminium with a linen shade", "dust the shade with a soft brush",
             "never let water near the fitting", "keep the cable loosely coiled",
             "the bulb holder is E27 and can be replaced by any electrician",
             "use bulbs of at most 40 watts"),
    "notebook": ("160 pages of 100 gsm ivory paper", "keep away from water",
                 "if the pages get damp, press them under weight between towels", "store flat",
                 "the thread binding lets the book open flat and rarely loosens",
                 "fountain pen ink does not bleed through"),
    "hoodie": ("brushed-back cotton fleece, 380 gsm", "machine wash at 30 degrees with similar colours",
               "dry flat; never tumble dry", "fold over a hanger bar rather than hanging from the hood",
               "loose cuffs can be re-sewn for free within a year",
               "the hood drawcord is flat cotton with metal tips"),
    "cap": ("six-panel brushed twill", "hand wash in cool water", "dry on a rounded shape such as a bowl",
            "do not crush the peak", "the leather strap can be replaced", "the peak is stiffened with card-free foam"),
    "scarf": ("lambswool woven in Scotland", "hand wash cold with wool detergent",
              "roll in a towel, then dry flat", "store with a cedar block against moths",
              "pulled threads should be eased back, never cut", "the fringe is knotted by hand"),
    "pillow": ("cotton cover over a feather-free hollowfibre insert", "remove the cover and wash it at 40 degrees",
               "tumble dry the insert on low with two tennis balls", "air it in the sun twice a year",
               "split seams are repaired free of charge", "the cover closes with a hidden zip"),
    "candle": ("rapeseed wax with a cotton wick", "wipe the jar with a dry cloth",
               "let the wax cool fully before moving it", "store out of sunlight so the colour does not fade",
               "trim the wick to 5 millimetres before every burn", "one candle burns for about 40 hours"),
    "umbrella": ("fibreglass ribs under a teflon-coated canopy", "rinse salt water off with fresh water",
                 "dry it open, never furled", "keep it furled loosely in its sleeve",
                 "a bent rib can be swapped at the shop", "it is rated for gusts of 90 kilometres per hour"),
    "wallet": ("vegetable-tanned leather", "wipe with a barely damp cloth",
               "let it dry naturally, away from radiators", "keep it out of tight back pockets",
               "condition the leather twice a year with a beeswax balm", "it holds six cards and folded notes"),
    "blanket": ("merino and cotton blend", "wash on the wool cycle at 30 degrees",
                "dry flat over two chairs", "store folded in a breathable cotton bag",
                "bobbles can be removed with a fabric comb", "it measures 130 by 180 centimetres"),
    "towel": ("600 gsm long-staple cotton terry", "wash at 60 degrees without fabric softener",
              "tumble dry on medium for the softest loops", "store in a dry, airy cupboard",
              "snagged loops should be trimmed, never pulled", "the edges are finished with a herringbone band"),
    "jacket": ("waxed cotton with a corduroy collar", "sponge clean; never machine wash",
               "hang to dry at room temperature", "hang on a broad wooden hanger",
               "re-proof the wax every autumn", "the poppers are solid brass"),
    "sweater": ("extra-fine merino knit", "hand wash cold or use the wool cycle",
                "dry flat on a towel, reshaping while damp", "fold it; hanging stretches the knit",
                "small holes can be repaired by our knitters", "the cuffs are tubular-knit"),
    "vase": ("mouth-blown recycled glass", "hand wash with warm soapy water",
             "dry with a lint-free cloth", "wrap in paper when stored",
             "cloudy water marks lift with a spoon of vinegar", "every vase has tiny bubbles, a sign of blowing"),
    "poster": ("giclee print on 310 gsm cotton rag", "do not clean; dust lightly with a dry brush",
               "keep it away from damp walls", "store rolled, image outwards, in a tube",
               "frame it behind UV-filtering glass", "the inks are rated for 100 years indoors"),
    "keychain": ("solid brass with a steel split ring", "polish with a soft cloth",
                 "dry after rain to slow the patina", "keep apart from phone screens",
                 "the split ring can be replaced at any key cutter", "the brass darkens with use"),
    "apron": ("heavy cotton drill with leather straps", "machine wash at 40 degrees after removing the straps",
              "line dry", "hang it by the neck strap", "straps can be ordered separately",
              "the chest pocket fits a phone and two pens"),
    "bottle": ("double-walled stainless steel", "hand wash; the powder coat does not like dishwashers",
               "dry with the lid off", "store open so no smell builds up",
               "replacement lids and seals are sold separately", "it keeps drinks cold for 24 hours"),
    "pen": ("turned aluminium body with a brass clip", "wipe clean", "keep the cap on when not in use",
            "store tip up", "refills are the standard Parker-style size", "it is balanced for long writing"),
    "clock": ("oak case with a silent sweep movement", "dust with a dry cloth",
              "keep away from radiators so the oak does not crack", "remove the battery for long storage",
              "the movement can be replaced in five minutes", "it runs for a year on one AA battery"),
    "beanie": ("ribbed lambswool", "hand wash cold", "dry flat", "store folded with cedar",
               "a dropped stitch can be caught with a crochet hook", "the turn-up is deep enough to fold twice"),
    "tote": ("12 oz organic canvas", "machine wash cold, inside out", "line dry and iron on medium",
             "fold flat", "handles are bar-tacked and rarely fail; if they do we replace the bag",
             "it carries up to 15 kilograms"),
}

TEMPLATES: dict[str, tuple[str, ...]] = {
    "material": ("The {item} is made of {material}.", "Our {item} is {material}.",
                 "Every {item} we sell is made from {material}."),
    "washing": ("To clean the {item}, {washing}.", "Care for the {item}: {washing}.",
                "When the {item} needs cleaning, {washing}."),
    "drying": ("After cleaning, {drying}.", "For the {item}, {drying}.", "Drying the {item}: {drying}."),
    "storage": ("To store the {item}, {storage}.", "Between uses, {storage}; this keeps the {item} at its best.",
                "Storage tip for the {item}: {storage}."),
    "repair": ("If the {item} is damaged, {repair}.", "Repairs: for the {item}, {repair}.",
               "We want the {item} to last: {repair}."),
    "detail": ("A detail worth knowing about the {item}: {detail}.", "On the {item}, {detail}.",
               "Customers often ask about the {item}; {detail}."),
}

POLICIES = (
    f"{SHOP} ships every order within two working days of payment.",
    f"Orders placed before noon at {SHOP} leave the workshop the same day.",
    "Delivery within the country is free for orders of three items or more.",
    "Every order can be returned within 60 days, unused and in its original packaging.",
    "Exchanges for a different size or colour are free; we send the new item when the old one arrives.",
    "Clothing comes in small, medium and large; the size guide lists chest and length for each.",
    "Small fits a chest of 86 to 94 centimetres, medium 94 to 102, and large 102 to 110.",
    "Colours are dyed in small batches, so two items of the same colour can differ slightly.",
    "Navy, grey and black are dyed with the most stable pigments and fade the least.",
    "Red, orange and pink dyes can run in the first wash; wash them alone the first time.",
    "Gift wrapping in recycled kraft paper is free; add a note when ordering.",
    "Bulk orders of a dozen or more of one item get ten percent off.",
    "Every product carries a two-year repair promise against faults in making.",
    "The workshop is open to visitors on Saturdays from ten to four.",
    "Orders for a named day are delivered on that day or, if it is a Sunday, the Monday after.",
    "Items marked today are couriered locally and arrive before eight in the evening.",
    "Packaging is plastic-free: paper tape, card boxes and paper padding.",
    "We do not use fabric softener in our own samples; it coats fibres and reduces absorbency.",
    "Wool items should never be tumble dried: heat and tumbling felt the fibres.",
    "Cotton items shrink up to three percent in the first hot wash; we pre-wash our t-shirts to prevent it.",
)


def paragraphs(rng: random.Random) -> list[str]:
    """Two phrasings of every product fact, plus the policies, in a fixed shuffled order."""
    out: list[str] = []
    for item, facts in PRODUCTS.items():
        values = dict(zip(TEMPLATES, facts, strict=True))
        for kind, templates in TEMPLATES.items():
            for template in rng.sample(templates, 2):
                text = template.format(item=item, **{kind: values[kind]})
                out.append(text[0].upper() + text[1:])
    out += POLICIES
    rng.shuffle(out)
    return out


def write_jsonl(path: Path, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in rows), encoding="utf-8")


def main() -> None:
    texts = paragraphs(random.Random(SEED))
    train = [t for i, t in enumerate(texts) if i % 8]
    held = [t for i, t in enumerate(texts) if not i % 8]
    write_jsonl(OUT_DIR / "train.jsonl", train)
    write_jsonl(OUT_DIR / "eval.jsonl", held)
    print(f"wrote {len(train)} train / {len(held)} eval paragraphs to {OUT_DIR}")


if __name__ == "__main__":
    main()
