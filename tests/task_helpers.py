"""Small local lm-eval tasks, read offline from JSON lines: what the benchmark tests score models on."""

from __future__ import annotations

import json
from pathlib import Path

CHOICE_DOCS = [  # choices of unequal length in characters and in bytes, so that acc, acc_norm and acc_bytes can differ
    {"question": "the cat sat on", "choices": ["the mat", "a", "the café mat", "on"], "label": 0},
    {"question": "the mat", "choices": ["sat", "was under the cat", "née"], "label": 1},
    {"question": "on the mat the", "choices": ["cat", "mat", "naïve cat sat"], "label": 2},
    {"question": "the cat", "choices": ["sat on the mat", "ate", "sat"], "label": 0},
    {"question": "the", "choices": ["cat", "mat", "über", "on the"], "label": 3},
    {"question": "the cat sat on the mat and", "choices": ["the cat sat", "déjà vu", "ran"], "label": 1},
    {"question": "sat on", "choices": ["the", "a mat", "the mat"], "label": 2},
]
NEXT_WORD_DOCS = [
    {"text": text}
    for text in [
        "the cat sat on the mat",
        "on the mat the cat sat",
        "the mat sat on the cat",
        "the cat sat on the cat",
        "the cat ran",
        "a mat",
    ]
]


def task_yaml(name: str, data: Path, body: str) -> str:
    """A local lm-eval task: reads `data` (JSON lines) through datasets' json builder, offline."""
    return (
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n{body}"
    )


def write_tiny_tasks(directory: Path) -> Path:
    """tiny_choice (multiple_choice: acc, acc_norm, acc_bytes) and tiny_next_word (loglikelihood: acc, perplexity,
    as lambada_openai), each with its JSON-lines data."""
    directory.mkdir(parents=True)
    for name, docs in [("choice", CHOICE_DOCS), ("next_word", NEXT_WORD_DOCS)]:
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs), encoding="utf-8")
    (directory / "tiny_choice.yaml").write_text(
        task_yaml(
            "tiny_choice",
            directory / "choice.jsonl",
            """\
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: label
metric_list:
  - {metric: acc, aggregation: mean, higher_is_better: true}
  - {metric: acc_norm, aggregation: mean, higher_is_better: true}
  - {metric: acc_bytes, aggregation: mean, higher_is_better: true}
""",
        ),
        encoding="utf-8",
    )
    (directory / "tiny_next_word.yaml").write_text(
        task_yaml(
            "tiny_next_word",
            directory / "next_word.jsonl",
            """\
output_type: loglikelihood
doc_to_text: "{{text.split(' ')[:-1]|join(' ')}}"
doc_to_target: "{{' ' + text.split(' ')[-1]}}"
metric_list:
  - {metric: perplexity, aggregation: perplexity, higher_is_better: false}
  - {metric: acc, aggregation: mean, higher_is_better: true}
""",
        ),
        encoding="utf-8",
    )
    return directory
