"""The answer as a person at a terminal reads it.

Moodle reads one JSON line (the last on stdout) and never runs us at a
terminal, so that line is what every answer is, except when a person runs a
command by hand: then, as httpie does, the same answer is laid out to be read.
`--json` asks for the line anyway. Only the layout differs: the content is
the contract's answer, nothing more or less.
"""

from __future__ import annotations

from typing import Any

from mlbackend.contract import to_json_line

STATUS_NAMES = {
    0: "ok",
    1: "error",
    2: "model not trained",
    4: "score too low",
    8: "not enough data",
    12: "score too low and not enough data",
}
#: Evaluation figures, in the order a person reads them, with their labels.
FIGURES = [
    ("auc", "AUC"),
    ("balanced accuracy", "balanced accuracy"),
    ("f1_score", "F1 (weighted)"),
    ("accuracy", "accuracy"),
    ("precision", "precision"),
    ("recall", "recall"),
]
#: Predictions shown at a terminal; the rest are counted (the JSON has them all).
MAX_ROWS = 50


def format_answer(command: str | None, answer: dict[str, Any], as_json: bool) -> str:
    """The text to print for `answer`: the JSON line, or a readable summary."""
    if as_json:
        return to_json_line(answer)
    status = int(answer.get("status", 1))
    head = f"{(command or 'mlbackend').capitalize()}: {STATUS_NAMES.get(status, 'status')}"
    lines = [head + ("" if status == 0 else f" (status {status})")]
    lines += [f"  {line}" for line in answer.get("info", [])]
    errors = answer.get("errors")
    if errors:
        lines += [f"  {e}" for e in ([errors] if isinstance(errors, str) else errors)]
    if command == "prediction" and "predictions" in answer:
        lines += _predictions(answer["predictions"])
    elif command == "evaluation" and "score" in answer:
        lines += _evaluation(answer)
    return "\n".join(lines)


def _predictions(rows: list[list[str]]) -> list[str]:
    width = max([len("sample")] + [len(r[0]) for r in rows[:MAX_ROWS]])
    out = [f"{'sample':<{width}}  class  probability"]
    out += [f"{sid:<{width}}  {label:>5}  {prob}" for sid, label, prob in rows[:MAX_ROWS]]
    if len(rows) > MAX_ROWS:
        out.append(f"... and {len(rows) - MAX_ROWS} more rows (--json prints them all)")
    return out


def _evaluation(answer: dict[str, Any]) -> list[str]:
    out = []
    for key, label in FIGURES:
        if key not in answer:
            continue
        spread = {"auc": "auc_deviation", "f1_score": "score_deviation"}.get(key)
        extra = f" ± {answer[spread]:.3f}" if spread and spread in answer else ""
        out.append(f"  {label:<18} {answer[key]:.3f}{extra}")
    out.append(
        f"  needed: mean F1 >= {answer.get('min_score')}, "
        f"deviation <= {answer.get('accepted_deviation')}"
    )
    if answer.get("dir"):
        out.append(f"  logs: {answer['dir']} (tensorboard --logdir {answer['dir']}/tensor)")
    return out
