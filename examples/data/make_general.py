"""Build tunesmith's bundled general prompt set for replay (`data.replay.source: bundled`).

Replay mixes a small share of general instructions into a task's training rows so the tuned model keeps
answering them as the base did. The rows here hold prompts only: at training time the base model answers
them itself (greedy), and those answers are what training replays (self-distillation, so the set carries no
one else's text and suits any base model). Written by hand for tunesmith from the templates below (stdlib
only, no randomness). Kinds: explanations, definitions, tips, lists, short writing, rewriting, word
problems, facts, comparisons, small talk, and short answers of the forms a general assistant is asked for
(a number, one word, arithmetic, a format instruction), with answers as long as the base gives them.

Since 2026-12-05 the bundled set also holds 76 short answers under format constraints worded several ways
("Reply with just the number.", "Answer with the topic only.": the form a closed-label task's instruction takes),
yes or no, and labels from a closed set named in the prompt. Without them, the null space (`data.replay.null_space`)
left a closed-label task's instruction outside the closed directions and routing lost 9 probes (README, "Keeping what
the base could do"). `--narrow` writes the earlier 150 (benchmarks/data/general_narrow.jsonl), to reproduce the
measurements taken with them.

The forgetting probes (src/tunesmith/eval/probes) are the measure of forgetting and are not part of this set:
`check_apart_from_probes` refuses any prompt that shares most of its words with a probe, and tests/test_replay_budget.py
checks the bundled file the same way.

    python examples/data/make_general.py           # writes src/tunesmith/data/replay/general.jsonl
    python examples/data/make_general.py --narrow  # writes benchmarks/data/general_narrow.jsonl
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "src/tunesmith/data/replay/general.jsonl"
NARROW_OUT = ROOT / "benchmarks/data/general_narrow.jsonl"
PROBES = ROOT / "src/tunesmith/eval/probes/general.jsonl"
HELDOUT = ROOT / "benchmarks/data/general_heldout.jsonl"  # the second forgetting check, kept apart the same way

EXPLAIN = ["ice floats on water", "we have seasons", "bread dough rises", "the moon seems to change shape",
           "metal feels colder than wood", "leaves change colour in autumn", "rainbows appear after rain",
           "the sea is salty", "plants need sunlight", "we hear thunder after we see lightning",
           "onions make people cry", "a compass needle points north", "hot air rises",
           "soap helps clean our hands", "people wear sunscreen", "bicycles have gears"]
DEFINE = ["generous", "fragile", "ancient", "curious", "harvest", "orbit", "recipe", "volcano", "meadow",
          "patient", "journey", "invent", "whisper", "breeze", "puzzle", "telescope"]
TIPS = ["saving money", "studying for a test", "sleeping better", "keeping a house plant alive",
        "writing a clear email", "learning a new language", "staying focused while working", "cooking rice",
        "packing for a trip", "running your first five kilometres", "remembering people's names",
        "taking better photos with a phone", "preparing for a job interview", "keeping a kitchen tidy"]
LISTS = ["kinds of birds", "green vegetables", "musical instruments", "things you find in a classroom",
         "sports played with a ball", "animals that live in the ocean", "tools a carpenter uses",
         "ways to get to work", "board games", "things to pack for a picnic", "jobs in a hospital",
         "hobbies you can do at home"]
POEMS = ["the rain", "a quiet morning", "the ocean", "a cat asleep in the sun", "autumn leaves", "the stars"]
NOTES = ["a neighbour who watered your plants", "a teacher at the end of the school year",
         "a friend who helped you move", "a colleague who covered your shift"]
REWRITE_FORMAL = ["hey, can u send me the file asap?", "we gotta fix this before friday",
                  "thanks a ton for the help yesterday", "the meeting got moved, fyi"]
FIX_GRAMMAR = ["She go to school every days.", "They was happy with there new house.",
               "I has two brother and one sister.", "He don't like apples."]
SUMMARISE = ["The train was delayed by forty minutes because of a signal fault near the station, so many "
             "passengers missed their connections.",
             "The new library opens on Monday with longer hours, a children's corner and free wifi for everyone.",
             "After weeks of dry weather, the farmers were relieved when heavy rain finally arrived on Sunday.",
             "The company said sales grew in the spring but fell again in the summer, when fewer people travelled."]
WORD_PROBLEMS = [
    "Lena reads 23 pages on Monday and 31 pages on Tuesday. How many pages did she read in total?",
    "A bus has 40 passengers. At the next stop 13 get off. How many passengers are left on the bus?",
    "A shop sells pencils in packs of 10. How many pencils are in 6 packs?",
    "Sam has 36 stickers and gives away 12. How many stickers does he have now?",
    "A garden has 5 rows of tulips with 9 tulips in each row. How many tulips are there?",
    "A cake is cut into 16 slices and 7 are eaten. How many slices remain?",
    "A train leaves at 3 pm and the trip takes 2 hours. What time does it arrive?",
    "Mia saves 15 dollars each week. How much has she saved after 4 weeks?",
    "There are 28 students and they sit in groups of 4. How many groups are there?",
    "A bottle holds 2 litres. How many litres do 8 bottles hold?",
    "Tom walks 3 kilometres to school and 3 kilometres back. How far does he walk each day?",
    "A box of 24 crayons is shared equally by 3 children. How many crayons does each child get?",
]
FACTS = ["the Moon", "elephants", "the Nile river", "honey bees", "the human heart", "penguins",
         "the Sahara desert", "owls", "the Amazon rainforest", "volcanoes", "whales", "the planet Saturn"]
SHORT_NUMBER = ["the number of wheels on a tricycle", "the number of minutes in one hour",
                "the number of sides of a square", "the number of legs of a cat",
                "the number of continents on Earth", "the number of strings on a standard guitar",
                "the number of players one team has on the field in a soccer match",
                "the number of seconds in one minute"]
ARITHMETIC = ["Calculate 14 + 6.", "What do you get when you add 13 and 4?", "Compute 30 minus 8.",
              "What is the product of 6 and 3?", "Calculate 100 divided by 4.", "What is 15 plus 15?",
              "Subtract 9 from 17.", "Double the number 21.", "What is 8 multiplied by 2?", "Compute 45 - 20."]
ONE_WORD = ["Which animal is known as the king of the jungle?", "Which planet is the largest in our solar system?",
            "What do bees make?", "Which season comes with snow in most of Europe?",
            "What is frozen water called?", "Which organ pumps blood through the body?",
            "What is the main ingredient of guacamole?", "Which instrument has 88 keys?"]
FORMAT = ["Reply with only the word 'yes'.", "Write the numbers from one to five as digits, separated by commas.",
          "In exactly three words, describe the ocean.", "Give a one-word answer: what is your favourite season?",
          "Write a sentence in lowercase letters only about the weather.",
          "List two colours, one per line, with nothing else.", "Write a title for a story about a lost key.",
          "Answer with a single emoji that means happy."]
HEAVIER = [("a feather", "a brick"), ("a car", "a bicycle"), ("a grape", "a watermelon"),
           ("an elephant", "a cat")]
# Added 2026-12-05: short answers under a format constraint, the form a closed-label task's instruction takes ("Answer
# with the team name only."): general questions asked that way, so the anchor keeps the base's answers to them.
REVIEWS = ["The food was cold and the waiter ignored us.", "Best concert I have been to in years!",
           "The hotel room was clean, quiet and bright.", "My new headphones broke after two days.",
           "The staff were friendly and the delivery came early.", "I waited an hour and nobody called me back."]
HEADLINES = ["Local team wins the cup after a late goal", "Heavy snow expected across the north tonight",
             "Singer announces a world tour for next spring", "New bakery opens with fresh bread every morning",
             "Cheap flights to the islands sell out in a day", "Storm warning issued for the coast this weekend"]
MESSAGES = ["Dear Sir or Madam, I am writing to request a copy of my invoice.", "hey!! u coming tonight or what",
            "Please find attached the report for your review.", "lol that was so funny, see ya later"]
TODO = ["the rent is due tomorrow morning", "repaint the garden fence some day", "reply to the doctor's message "
        "before noon", "plan a holiday for next summer"]
SENTENCES = ["Close the window, please.", "Where did you park the car?", "The library opens at nine.",
             "Bring your umbrella tomorrow."]
ROOMS = ["a bathtub", "a fridge", "a pillow", "a sofa", "a toothbrush", "an oven"]
COUNTS = [("How many wheels does a bicycle have?", "Reply with just the number."),
          ("How many strings does a violin have?", "Just the number, please."),
          ("How many letters are in the English alphabet?", "Only the number, please."),
          ("How many planets are in our solar system?", "Reply with just the number."),
          ("How many players from one team are on a basketball court at once?", "Respond with the number only."),
          ("How many fingers are on one human hand?", "Only the number, please."),
          ("How many years are in a decade?", "Reply with just the number."),
          ("How many cents make one dollar?", "Respond with the number only."),
          ("How many minutes are in half an hour?", "Only the number, please."),
          ("How many legs does an insect have?", "Reply with just the number.")]
SUMS = [("Add 8 and 5.", "Reply with the result only."), ("What is 14 minus 6?", "Respond with the number only."),
        ("Multiply 6 by 7.", "Only the result, please."), ("What is 9 times 3?", "Just the number, please."),
        ("What is 16 + 9?", "Reply with the sum only."), ("What is 30 - 12?", "Respond with the number only."),
        ("What is 5 times 8?", "Just the number, please."), ("Add 13 and 7.", "Reply with the result only."),
        ("Divide 40 by 5.", "Only the result, please."), ("What is 25 + 25?", "Reply with the sum only."),
        ("What is 18 minus 9?", "Just the number, please."), ("What is 6 times 6?", "Respond with the number only.")]
SINGLE_WORD = ["What do you call a baby dog?", "What is the name of the star at the centre of our solar system?",
               "What do spiders spin?", "Which tool do you use to cut paper?", "What do people wear on their feet?",
               "Which meal do most people eat in the morning?", "What do you use to unlock a door?",
               "Which vehicle flies people between countries?"]
WORD_ASKS = ["Reply with one word only.", "One word, please.", "Respond with a single word."]
OPENERS = [("Of course", "Suggest a name for a goldfish."), ("Great question", "Name a sport played on ice."),
           ("Okay", "Suggest a hobby for a rainy day."), ("Happy to help", "Name a vegetable that grows underground.")]
NAME_ONE = [("Name a country in South America.", "Answer with the country only."),
            ("Name a musical instrument with strings.", "Answer with the instrument only."),
            ("Name a fruit that grows on trees.", "Answer with the fruit only."),
            ("Name a tool used in a garden.", "Answer with the tool only."),
            ("Name a city in Europe.", "Answer with the city only."),
            ("Name a drink people have with breakfast.", "Answer with the drink only.")]
YES_NO = ["Can a penguin fly? Reply with yes or no only.", "Is the Sun a star? Yes or no, please.",
          "Does ice melt when it is heated? Respond with yes or no only.",
          "Is a kilometre longer than a metre? Just yes or no.", "Do trees grow from seeds? Reply with yes or no only.",
          "Is Saturday a weekday? Yes or no, please."]
SMALL_TALK = ["Hi! How are you today?", "What can you help me with?", "Tell me a short joke.",
              "Can you recommend a good kind of book for a long train ride?", "What is a nice thing to do on a "
              "rainy afternoon?", "I feel a bit tired today. Any advice?", "What should I cook for dinner tonight?",
              "Thank you for your help!"]


def general_prompts(narrow: bool = False) -> list[dict[str, str]]:
    """Every prompt with its kind and a stable id, in a fixed order (`narrow`: the first 150 only, as bundled
    before 2026-12-05)."""
    made: list[tuple[str, str]] = []
    made += [("explain", f"In one or two sentences, explain why {x}.") for x in EXPLAIN]
    made += [("define", f"What does the word '{w}' mean? Answer in one sentence.") for w in DEFINE]
    made += [("tip", f"Give me one short tip for {t}.") for t in TIPS]
    made += [("list", f"List three {x}.") for x in LISTS]
    made += [("writing", f"Write a two-line poem about {x}.") for x in POEMS]
    made += [("writing", f"Write a short thank-you note to {x}.") for x in NOTES]
    made += [("rewrite", f"Rewrite this message so it sounds more formal: \"{s}\"") for s in REWRITE_FORMAL]
    made += [("rewrite", f"Correct the grammar of this sentence: \"{s}\"") for s in FIX_GRAMMAR]
    made += [("rewrite", f"Summarise this in one short sentence: \"{s}\"") for s in SUMMARISE]
    made += [("word_problem", p) for p in WORD_PROBLEMS]
    made += [("fact", f"Tell me one interesting fact about {x}.") for x in FACTS]
    made += [("short_number", f"Give {q}, in digits.") for q in SHORT_NUMBER]
    made += [("arithmetic", q) for q in ARITHMETIC]
    made += [("one_word", f"{q} Answer in one word.") for q in ONE_WORD]
    made += [("format", q) for q in FORMAT]
    made += [("compare", f"Which is heavier, {a} or {b}?") for a, b in HEAVIER]
    made += [("small_talk", p) for p in SMALL_TALK]
    if not narrow:
        made += format_constrained_prompts()
    return [{"id": f"{kind}-{i:03d}", "kind": kind, "prompt": prompt} for i, (kind, prompt) in enumerate(made)]


def format_constrained_prompts() -> list[tuple[str, str]]:
    """Short answers under format constraints, as (kind, prompt): the 76 added on 2026-12-05."""
    made: list[tuple[str, str]] = []
    made += [("label", f"Is this review positive or negative? Answer with the label only.\nReview: {r}")
             for r in REVIEWS]
    made += [("label", "Which topic is this headline about: sport, weather, music, food or travel? Answer with the "
              f"topic only.\nHeadline: {h}") for h in HEADLINES]
    made += [("label", f"Is this message formal or informal? Answer with one of the two words only.\nMessage: {m}")
             for m in MESSAGES]
    made += [("label", f"Sort this task into today, this week or later. Answer with the choice only.\nTask: {t}")
             for t in TODO]
    made += [("label", f"Is this sentence a question, a command or a statement? Reply with the type only.\n"
              f"Sentence: {s}") for s in SENTENCES]
    made += [("label", f"In which room of a house would you usually find {x}? Answer with the room only.")
             for x in ROOMS]
    made += [("short_number", f"{q} {ask}") for q, ask in COUNTS]
    made += [("arithmetic", f"{q} {ask}") for q, ask in SUMS]
    made += [("one_word", f"{q} {WORD_ASKS[i % len(WORD_ASKS)]}") for i, q in enumerate(SINGLE_WORD)]
    made += [("format", f"Start your reply with '{opener}'. {task}") for opener, task in OPENERS]
    made += [("name_one", f"{q} {ask}") for q, ask in NAME_ONE]
    made += [("yes_no", q) for q in YES_NO]
    return made


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))


def check_apart_from_probes(rows: list[dict[str, str]], probes: Path = PROBES, limit: float = 0.5) -> None:
    """Refuse a prompt whose word set overlaps a probe's by more than `limit` (Jaccard)."""
    probe_prompts = [json.loads(line)["prompt"] for line in probes.read_text(encoding="utf-8").splitlines() if line]
    for row in rows:
        mine = words(row["prompt"])
        for probe in probe_prompts:
            theirs = words(probe)
            overlap = len(mine & theirs) / len(mine | theirs)
            if overlap > limit:
                raise SystemExit(f"{row['id']} is too close to the probe {probe!r} ({overlap:.2f})")


def main() -> None:
    narrow = "--narrow" in sys.argv[1:]
    rows, out = general_prompts(narrow), NARROW_OUT if narrow else OUT
    check_apart_from_probes(rows)
    check_apart_from_probes(rows, HELDOUT)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} prompts -> {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
