"""Small Python functions, each with several right and several buggy implementations (off by
one, case handling, wrong initial value, a shared mutable default, wrong order...) and unit
tests stored as JSON literals (argument lists, expected values) for the sandbox."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from typing import Any

from trainer.data.synth.common import Case, Category, Family, Resp, elaborate_generic, pick


@dataclass(frozen=True)
class CodeTask:
    name: str
    spec: str
    good: list[str]
    bad: list[str]
    tests: list[list[Any]]  # [[args...], expected]: JSON as stored in the check

    @property
    def signature(self) -> str:
        return self.good[0].splitlines()[0].removeprefix("def ").rstrip(":")


CODE_TASKS = [
    CodeTask("sum_to", "returns the sum of the integers from 1 to n inclusive",
        ["def sum_to(n):\n    return sum(range(1, n + 1))",
         "def sum_to(n):\n    return n * (n + 1) // 2",
         "def sum_to(n):\n    total = 0\n    for k in range(1, n + 1):\n        total += k\n    return total"],
        ["def sum_to(n):\n    return sum(range(1, n))",
         "def sum_to(n):\n    return n * (n - 1) // 2",
         "def sum_to(n):\n    total = 1\n    for k in range(1, n + 1):\n        total += k\n    return total"],
        [[[1], 1], [[4], 10], [[10], 55], [[0], 0]]),
    CodeTask("is_palindrome", "returns True if the string s reads the same backwards, ignoring case",
        ["def is_palindrome(s):\n    s = s.lower()\n    return s == s[::-1]",
         "def is_palindrome(s):\n    t = s.casefold()\n    return all(t[i] == t[-1 - i] for i in range(len(t) // 2))"],
        ["def is_palindrome(s):\n    return s == s[::-1]",
         "def is_palindrome(s):\n    t = s.lower()\n    return all(t[i] == t[-i] for i in range(len(t) // 2))",
         "def is_palindrome(s):\n    t = s.lower()\n    return t[0] == t[-1]"],
        [[["Level"], True], [["abc"], False], [["noon"], True], [["abca"], False]]),
    CodeTask("count_vowels", "returns how many vowels (a, e, i, o, u, either case) the string s has",
        ["def count_vowels(s):\n    return sum(ch in 'aeiouAEIOU' for ch in s)",
         "def count_vowels(s):\n    count = 0\n    for ch in s.lower():\n        if ch in 'aeiou':\n            count += 1\n    return count"],
        ["def count_vowels(s):\n    return sum(ch in 'aeiou' for ch in s)",
         "def count_vowels(s):\n    count = 0\n    for ch in s.lower():\n        if ch in 'aeiouy':\n            count += 1\n    return count",
         "def count_vowels(s):\n    return len(set(ch for ch in s.lower() if ch in 'aeiou'))"],
        [[["hello"], 2], [["AEIOU"], 5], [["xyz"], 0], [["banana"], 3]]),
    CodeTask("largest", "returns the largest number in the non-empty list xs",
        ["def largest(xs):\n    best = xs[0]\n    for x in xs:\n        if x > best:\n            best = x\n    return best",
         "def largest(xs):\n    return max(xs)"],
        ["def largest(xs):\n    best = 0\n    for x in xs:\n        if x > best:\n            best = x\n    return best",
         "def largest(xs):\n    return sorted(xs)[0]",
         "def largest(xs):\n    best = xs[0]\n    for x in xs[1:-1]:\n        if x > best:\n            best = x\n    return best"],
        [[[[3, 9, 2]], 9], [[[-5, -2, -9]], -2], [[[7]], 7], [[[1, 4, 8]], 8]]),
    CodeTask("factorial", "returns n! for an integer n >= 0",
        ["def factorial(n):\n    out = 1\n    for k in range(2, n + 1):\n        out *= k\n    return out",
         "def factorial(n):\n    return 1 if n <= 1 else n * factorial(n - 1)"],
        ["def factorial(n):\n    out = 1\n    for k in range(2, n):\n        out *= k\n    return out",
         "def factorial(n):\n    out = 0\n    for k in range(1, n + 1):\n        out *= k\n    return out",
         "def factorial(n):\n    return n if n <= 1 else n * factorial(n - 1)"],
        [[[0], 1], [[1], 1], [[3], 6], [[5], 120]]),
    CodeTask("second_item", "returns the second element of the list xs, or None if it has fewer than two",
        ["def second_item(xs):\n    return xs[1] if len(xs) >= 2 else None",
         "def second_item(xs):\n    if len(xs) < 2:\n        return None\n    return xs[1]"],
        ["def second_item(xs):\n    return xs[1] if len(xs) >= 1 else None",
         "def second_item(xs):\n    return xs[2] if len(xs) >= 3 else None",
         "def second_item(xs):\n    return xs[-2] if len(xs) >= 2 else None"],
        [[[[4, 5, 6]], 5], [[[4]], None], [[[]], None], [[[1, 2]], 2]]),
    CodeTask("celsius_to_f", "converts a temperature from Celsius to Fahrenheit",
        ["def celsius_to_f(c):\n    return c * 9 / 5 + 32",
         "def celsius_to_f(c):\n    return 32 + 1.8 * c"],
        ["def celsius_to_f(c):\n    return c * 5 / 9 + 32",
         "def celsius_to_f(c):\n    return (c + 32) * 9 / 5",
         "def celsius_to_f(c):\n    return c * 9 / 5 - 32"],
        [[[0], 32.0], [[100], 212.0], [[-40], -40.0]]),
    CodeTask("dedupe", "returns the items of xs without duplicates, keeping first occurrences in order",
        ["def dedupe(xs):\n    seen = set()\n    out = []\n    for x in xs:\n        if x not in seen:\n            seen.add(x)\n            out.append(x)\n    return out",
         "def dedupe(xs):\n    return list(dict.fromkeys(xs))"],
        ["def dedupe(xs):\n    return sorted(set(xs))",
         "def dedupe(xs):\n    out = []\n    for x in reversed(xs):\n        if x not in out:\n            out.insert(0, x)\n    return out",
         "def dedupe(xs):\n    return [x for i, x in enumerate(xs) if x not in xs[i + 1:]]"],
        [[[[3, 1, 3, 2]], [3, 1, 2]], [[[1, 1]], [1]], [[[]], []], [[[2, 1, 2]], [2, 1]]]),
    CodeTask("fizzbuzz", "returns 'Fizz' for multiples of 3, 'Buzz' for multiples of 5, 'FizzBuzz' for multiples of both, else the number as a string",
        ["def fizzbuzz(n):\n    if n % 15 == 0:\n        return 'FizzBuzz'\n    if n % 3 == 0:\n        return 'Fizz'\n    if n % 5 == 0:\n        return 'Buzz'\n    return str(n)",
         "def fizzbuzz(n):\n    out = ('Fizz' if n % 3 == 0 else '') + ('Buzz' if n % 5 == 0 else '')\n    return out or str(n)"],
        ["def fizzbuzz(n):\n    if n % 3 == 0:\n        return 'Fizz'\n    if n % 5 == 0:\n        return 'Buzz'\n    if n % 15 == 0:\n        return 'FizzBuzz'\n    return str(n)",
         "def fizzbuzz(n):\n    out = ('Fizz' if n % 3 == 0 else '') + ('Buzz' if n % 5 == 0 else '')\n    return out or n",
         "def fizzbuzz(n):\n    out = ('Buzz' if n % 5 == 0 else '') + ('Fizz' if n % 3 == 0 else '')\n    return out or str(n)"],
        [[[3], "Fizz"], [[10], "Buzz"], [[30], "FizzBuzz"], [[7], "7"]]),
    CodeTask("reverse_words", "returns the string s with the order of its space-separated words reversed",
        ["def reverse_words(s):\n    return ' '.join(reversed(s.split()))",
         "def reverse_words(s):\n    return ' '.join(s.split()[::-1])"],
        ["def reverse_words(s):\n    return s[::-1]",
         "def reverse_words(s):\n    return ' '.join(w[::-1] for w in s.split())",
         "def reverse_words(s):\n    words = s.split()\n    return ' '.join(words[-1:] + words[:-1])"],
        [[["hello world"], "world hello"], [["a b c"], "c b a"], [["one"], "one"]]),
    CodeTask("add_tag", "returns a new list with tag appended to tags (a fresh list when tags is not given)",
        ["def add_tag(tag, tags=None):\n    tags = [] if tags is None else list(tags)\n    tags.append(tag)\n    return tags",
         "def add_tag(tag, tags=None):\n    return [*(tags or []), tag]"],
        ["def add_tag(tag, tags=[]):\n    tags.append(tag)\n    return tags",
         "def add_tag(tag, tags=None):\n    tags = [] if tags is None else list(tags)\n    tags.insert(0, tag)\n    return tags",
         "def add_tag(tag, tags=None):\n    return [tag] if tags is None else tags"],
        [[["a"], ["a"]], [["b"], ["b"]], [["c", ["x"]], ["x", "c"]]]),
    CodeTask("count_words", "returns a dict mapping each lowercase word of s to how often it occurs",
        ["def count_words(s):\n    counts = {}\n    for w in s.lower().split():\n        counts[w] = counts.get(w, 0) + 1\n    return counts",
         "def count_words(s):\n    from collections import Counter\n    return dict(Counter(s.lower().split()))"],
        ["def count_words(s):\n    counts = {}\n    for w in s.split():\n        counts[w] = counts.get(w, 0) + 1\n    return counts",
         "def count_words(s):\n    counts = {}\n    for w in s.lower().split():\n        counts[w] = 1\n    return counts",
         "def count_words(s):\n    counts = {}\n    for w in s.lower().split():\n        counts[w] = counts.get(w, 1) + 1\n    return counts"],
        [[["a b a"], {"a": 2, "b": 1}], [["Hi hi"], {"hi": 2}], [[""], {}]]),
    CodeTask("flatten", "flattens a list of lists xss by one level",
        ["def flatten(xss):\n    return [x for xs in xss for x in xs]",
         "def flatten(xss):\n    out = []\n    for xs in xss:\n        out.extend(xs)\n    return out"],
        ["def flatten(xss):\n    out = []\n    for xs in xss:\n        out.append(xs)\n    return out",
         "def flatten(xss):\n    return [xs[0] for xs in xss if xs]",
         "def flatten(xss):\n    return [x for xs in xss[1:] for x in xs]"],
        [[[[[1, 2], [3]]], [1, 2, 3]], [[[[], [4]]], [4]], [[[]], []]]),
    CodeTask("is_prime", "returns True if the integer n is a prime number",
        ["def is_prime(n):\n    if n < 2:\n        return False\n    return all(n % d for d in range(2, int(n ** 0.5) + 1))",
         "def is_prime(n):\n    if n < 2:\n        return False\n    d = 2\n    while d * d <= n:\n        if n % d == 0:\n            return False\n        d += 1\n    return True"],
        ["def is_prime(n):\n    return all(n % d for d in range(2, int(n ** 0.5) + 1))",
         "def is_prime(n):\n    if n < 2:\n        return False\n    return all(n % d for d in range(2, int(n ** 0.5)))",
         "def is_prime(n):\n    return n == 2 or n % 2 == 1"],
        [[[2], True], [[1], False], [[9], False], [[13], True], [[25], False]]),
    CodeTask("gcd", "returns the greatest common divisor of two positive integers a and b",
        ["def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a",
         "def gcd(a, b):\n    return a if b == 0 else gcd(b, a % b)"],
        ["def gcd(a, b):\n    while b:\n        a, b = a % b, b\n    return a",
         "def gcd(a, b):\n    return min(a, b)",
         "def gcd(a, b):\n    for d in range(min(a, b), 1, -1):\n        if a % d == 0 and b % d == 0:\n            return d\n    return 0"],
        [[[12, 18], 6], [[7, 5], 1], [[9, 3], 3], [[8, 12], 4]]),
    CodeTask("capitalize_words", "returns s with the first letter of every space-separated word upper-cased and the rest lower-cased",
        ["def capitalize_words(s):\n    return ' '.join(w.capitalize() for w in s.split(' '))",
         "def capitalize_words(s):\n    return ' '.join(w[:1].upper() + w[1:].lower() for w in s.split(' '))"],
        ["def capitalize_words(s):\n    return s.capitalize()",
         "def capitalize_words(s):\n    return ' '.join(w[:1].upper() + w[1:] for w in s.split(' '))",
         "def capitalize_words(s):\n    return s.upper()"],
        [[["hello world"], "Hello World"], [["pYTHON code"], "Python Code"], [["a"], "A"]]),
    CodeTask("clamp", "returns x limited to the range [lo, hi]",
        ["def clamp(x, lo, hi):\n    return max(lo, min(x, hi))",
         "def clamp(x, lo, hi):\n    if x < lo:\n        return lo\n    if x > hi:\n        return hi\n    return x"],
        ["def clamp(x, lo, hi):\n    return min(lo, max(x, hi))",
         "def clamp(x, lo, hi):\n    if x < lo:\n        return lo\n    return x",
         "def clamp(x, lo, hi):\n    if x <= lo:\n        return hi\n    if x >= hi:\n        return lo\n    return x"],
        [[[5, 0, 10], 5], [[-3, 0, 10], 0], [[42, 0, 10], 10]]),
    CodeTask("index_of", "returns the index of the first occurrence of x in xs, or -1 if it is absent",
        ["def index_of(xs, x):\n    for i, v in enumerate(xs):\n        if v == x:\n            return i\n    return -1",
         "def index_of(xs, x):\n    return xs.index(x) if x in xs else -1"],
        ["def index_of(xs, x):\n    for i, v in enumerate(xs):\n        if v == x:\n            return i + 1\n    return -1",
         "def index_of(xs, x):\n    found = -1\n    for i, v in enumerate(xs):\n        if v == x:\n            found = i\n    return found",
         "def index_of(xs, x):\n    for i, v in enumerate(xs):\n        if v == x:\n            return i\n    return None"],
        [[[[5, 7, 5], 5], 0], [[[1, 2, 3], 3], 2], [[[1], 9], -1]]),
    CodeTask("merge_sorted", "merges two sorted lists a and b into one sorted list",
        ["def merge_sorted(a, b):\n    return sorted(a + b)",
         "def merge_sorted(a, b):\n    out, i, j = [], 0, 0\n    while i < len(a) and j < len(b):\n        if a[i] <= b[j]:\n            out.append(a[i]); i += 1\n        else:\n            out.append(b[j]); j += 1\n    return out + a[i:] + b[j:]"],
        ["def merge_sorted(a, b):\n    return a + b",
         "def merge_sorted(a, b):\n    out, i, j = [], 0, 0\n    while i < len(a) and j < len(b):\n        if a[i] <= b[j]:\n            out.append(a[i]); i += 1\n        else:\n            out.append(b[j]); j += 1\n    return out",
         "def merge_sorted(a, b):\n    return sorted(set(a + b))"],
        [[[[1, 4], [2, 3]], [1, 2, 3, 4]], [[[1, 2], [2]], [1, 2, 2]], [[[], [5]], [5]]]),
    CodeTask("digit_sum", "returns the sum of the decimal digits of the integer n (ignoring its sign)",
        ["def digit_sum(n):\n    return sum(int(d) for d in str(abs(n)))",
         "def digit_sum(n):\n    n, total = abs(n), 0\n    while n:\n        total += n % 10\n        n //= 10\n    return total"],
        ["def digit_sum(n):\n    return sum(int(d) for d in str(n))",
         "def digit_sum(n):\n    n, total = abs(n), 0\n    while n > 9:\n        total += n % 10\n        n //= 10\n    return total",
         "def digit_sum(n):\n    return len(str(abs(n)))"],
        [[[123], 6], [[-45], 9], [[0], 0], [[7], 7]]),
]  # fmt: skip


# Names a task's code may use instead of its own (parameters also in the prompt), so one task's
# texts vary: every name is replaced consistently in the code, the signature and the spec.
RENAMES: dict[str, dict[str, list[str]]] = {
    "sum_to": {"n": ["m", "count", "limit"], "total": ["acc", "result"], "k": ["i", "num"]},
    "is_palindrome": {"s": ["text", "word", "string"], "t": ["low", "folded"]},
    "count_vowels": {"s": ["text", "word"], "count": ["n", "total"], "ch": ["c", "letter"]},
    "largest": {"xs": ["nums", "values", "items"], "best": ["top", "biggest", "m"],
                "x": ["v", "num"]},
    "factorial": {"n": ["m", "num", "x"], "out": ["result", "acc"], "k": ["i", "j", "d"]},
    "second_item": {"xs": ["items", "values", "seq"]},
    "celsius_to_f": {"c": ["celsius", "deg", "temp"]},
    "dedupe": {"xs": ["items", "values", "seq"], "seen": ["found", "met"],
               "out": ["result", "unique"], "x": ["item", "v"], "i": ["j", "k"]},
    "fizzbuzz": {"n": ["k", "num", "i"], "out": ["word", "text"]},
    "reverse_words": {"s": ["text", "sentence"], "words": ["parts", "tokens"],
                      "w": ["p", "word"]},
    "add_tag": {"tag": ["item", "label", "t"], "tags": ["items", "labels", "existing"]},
    "count_words": {"s": ["text", "line"], "counts": ["freq", "tally"], "w": ["word", "token"]},
    "flatten": {"xss": ["groups", "rows", "nested"], "xs": ["group", "row", "part"],
                "x": ["item", "v"]},
    "is_prime": {"n": ["k", "num", "m"], "d": ["i", "div", "p"]},
    "gcd": {"a": ["x", "m", "p"], "b": ["y", "n", "q"]},
    "capitalize_words": {"s": ["text", "line"], "w": ["word", "part"]},
    "clamp": {"x": ["value", "v", "n"], "lo": ["low", "lower", "minimum"],
              "hi": ["high", "upper", "maximum"]},
    "index_of": {"xs": ["items", "values", "seq"], "x": ["target", "item", "wanted"],
                 "i": ["k", "pos", "idx"], "v": ["y", "elem"], "found": ["result", "where"]},
    "merge_sorted": {"a": ["left", "first", "xs"], "b": ["right", "second", "ys"],
                     "out": ["merged", "result"]},
    "digit_sum": {"n": ["num", "k", "value"], "total": ["acc", "s"], "d": ["ch", "digit"]},
}  # fmt: skip


def _names_re(names: list[str]) -> re.Pattern[str]:
    return re.compile(r"\b(" + "|".join(sorted(names, key=len, reverse=True)) + r")\b")


def renamed(rng: random.Random, task: CodeTask) -> CodeTask:
    """The task with some of its names replaced (RENAMES), the same in every implementation
    and in the spec, so right and wrong versions stay right and wrong."""
    mapping = {k: pick(rng, [k, *alts]) for k, alts in RENAMES.get(task.name, {}).items()}
    mapping = {k: v for k, v in mapping.items() if k != v}
    if not mapping:
        return task
    names = _names_re(list(mapping))

    def sub(text: str) -> str:
        return names.sub(lambda m: mapping[m.group(1)], text)

    params = set(task.signature.partition("(")[2].rstrip(")").replace("=None", "").replace(
        "=[]", "").replace(" ", "").split(","))  # fmt: skip
    in_spec = {k: v for k, v in mapping.items() if k in params}
    spec = task.spec
    if in_spec:
        spec = _names_re(list(in_spec)).sub(lambda m: in_spec[m.group(1)], spec)
    return replace(task, spec=spec, good=[sub(c) for c in task.good],
                   bad=[sub(c) for c in task.bad])  # fmt: skip


def example(rng: random.Random, task: CodeTask) -> str:
    args, want = pick(rng, task.tests)
    return f"{task.name}({', '.join(repr(a) for a in args)}) should return {want!r}"


INTROS = ["Here is the function:", "Here's an implementation:", "This does it:",
          "You can write it like this:", "One way to do it:"]  # fmt: skip
AFTER = ["It handles the examples above.", "This runs in linear time.",
         "It keeps the code short and readable.", "No imports are needed."]  # fmt: skip


def fence(code: str) -> str:
    return f"```python\n{code}\n```"


# Each family: a way of asking, and a way of answering (name -> prompt templates, renderer).
def r_fenced(rng: random.Random, task: CodeTask, code: str) -> str:
    return f"{pick(rng, INTROS)}\n\n{fence(code)}"


def r_bare(rng: random.Random, task: CodeTask, code: str) -> str:
    return code


def r_explained(rng: random.Random, task: CodeTask, code: str) -> str:
    return f"{fence(code)}\n\nThe function {task.spec}. {pick(rng, AFTER)}"


def r_markdown(rng: random.Random, task: CodeTask, code: str) -> str:
    return (f"### Approach\n\nThe function `{task.name}` {task.spec}.\n\n### Code\n\n"
            f"{fence(code)}")  # fmt: skip


def r_chatty(rng: random.Random, task: CodeTask, code: str) -> str:
    return (f"Sure thing! {pick(rng, INTROS)}\n\n{fence(code)}\n\nGive it a try and let me "
            "know how it goes!")  # fmt: skip


def r_docstring(rng: random.Random, task: CodeTask, code: str) -> str:
    head, _, body = code.partition("\n")
    return f'{head}\n    """{task.spec[0].upper()}{task.spec[1:]}."""\n{body}'


ASK = {
    "spec": (["Write a Python function `{sig}` that {spec}. For example, {ex}.",
              "Implement `{sig}` in Python: it {spec}. Example: {ex}."], r_fenced),
    "bare": (["def {sig}:\n    # {spec}\n\nComplete this function. Reply with code only.",
              "Code only, no explanation: a Python function {sig} that {spec}."], r_bare),
    "explain": (["I need a function {name} that {spec} (e.g. {ex}). Can you write it and "
                 "briefly explain it?",
                 "Please write {name}({args}) in Python, which {spec}, plus one line on how "
                 "it works."], r_explained),
    "markdown": (["## Task\nWrite `{sig}`, which {spec}.\n\n## Example\n{ex}\n\nAnswer with an "
                  "Approach section and a Code section.",
                  "**Function:** `{sig}`\n**Behaviour:** it {spec}.\n**Example:** {ex}\n\n"
                  "Reply in Markdown with an approach and the code.",
                  "Using Markdown headings, explain and write {name}({args}), which {spec}."],
                 r_markdown),
    "chatty": (["hey! could you help me write a python func called {name}? it {spec}. like "
                "{ex}. thx", "Quick favour: my script needs {name} -- it {spec}. Can you "
                "write it for me?"], r_chatty),
    "docstring": (["Write a documented Python function `{sig}` (with a docstring) that {spec}.",
                   "Give me `{sig}` with a one-line docstring; it {spec}. Example: {ex}."],
                  r_docstring),
}  # fmt: skip


def family(name: str) -> Family:
    templates, render = ASK[name]

    def make(rng: random.Random) -> Case:
        task = renamed(rng, pick(rng, CODE_TASKS))
        args = task.signature.partition("(")[2].rstrip(")")
        prompt = pick(rng, templates).format(
            sig=task.signature, spec=task.spec, ex=example(rng, task), name=task.name, args=args
        )
        check = {"kind": "unit_tests", "name": task.name, "tests": task.tests, "group": task.name}
        other = r_bare if render is not r_bare else r_fenced
        good = [Resp(render(rng, task, c), name) for c in task.good]
        good.append(Resp(other(rng, task, pick(rng, task.good)), "alt"))
        bad = [Resp(render(rng, task, c), name) for c in task.bad]
        bad.append(Resp(other(rng, task, pick(rng, task.bad)), "alt"))
        return Case(prompt, check, good, bad)

    return make


def hedge(rng: random.Random, text: str) -> str:
    return pick(rng, ["I think this should work, but I haven't tested it:",
                      "Probably something like this (not fully sure):"]) + "\n\n" + text  # fmt: skip


def assure(rng: random.Random, text: str) -> str:
    return pick(rng, ["This is definitely correct and fully tested:",
                      "Here's the correct solution, guaranteed:"]) + "\n\n" + text  # fmt: skip


def elaborate(rng: random.Random, prompt: str, text: str) -> str:
    return elaborate_generic(rng, prompt, text + "\n\nThis solution is efficient, readable and "
                             "handles the edge cases you would expect.")  # fmt: skip


CATEGORY = Category(
    "code",
    {n: family(n) for n in ASK},
    heldout="docstring",
    hedge=hedge,
    assure=assure,
    elaborate=elaborate,
)
