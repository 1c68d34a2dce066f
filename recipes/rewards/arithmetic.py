"""A GRPO reward that checks an answer against the question it answers, for prompts that come without answers.

`recipes/grpo_prompts.yaml` trains on arithmetic questions alone (`examples/data/number_prompts/`): the result
each asks for is computed here from the prompt, so the data needs no answer column. tunesmith gives a reward the
prompt's text when the function has a parameter named `prompt`.
"""

import re

NUMBER = r"-?\d+"
# (pattern, operation) for each way the questions are asked; the two numbers in the order the operation takes them
QUESTIONS = [
    (rf"What is ({NUMBER}) ([-+*]) ({NUMBER})\?", None),
    (rf"Add ({NUMBER}) and ({NUMBER})\.", "+"),
    (rf"What is the sum of ({NUMBER}) and ({NUMBER})\?", "+"),
    (rf"Subtract ({NUMBER}) from ({NUMBER})\.", "from"),
    (rf"Take ({NUMBER}) away from ({NUMBER})\.", "from"),
    (rf"Multiply ({NUMBER}) by ({NUMBER})\.", "*"),
    (rf"What is the product of ({NUMBER}) and ({NUMBER})\?", "*"),
]


def expected_number(prompt: str) -> int | None:
    """The result the question asks for, or None where the prompt is not one of the questions above."""
    for pattern, operation in QUESTIONS:
        found = re.search(pattern, prompt)
        if not found:
            continue
        if operation is None:
            a, operation, b = int(found[1]), found[2], int(found[3])
        else:
            a, b = int(found[1]), int(found[2])
        if operation == "from":
            a, b, operation = b, a, "-"
        return {"+": a + b, "-": a - b, "*": a * b}[operation]
    return None


def right_number(completion: str, reference: str, prompt: str) -> float:
    """1.0 when the last number in the answer is the result the prompt asks for ("79 + 56 = 135" and "135" both
    are), else 0.0 (also for a prompt this reward cannot read)."""
    numbers = re.findall(NUMBER, completion.replace(",", ""))
    expected = expected_number(prompt)
    return float(expected is not None and bool(numbers) and int(numbers[-1]) == expected)
