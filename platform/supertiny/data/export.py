"""Export a snapshot in the OpenAI chat format with tools: one ``{"messages": [...], "tools": [...]}``
record per line (JSONL, a file per split), or a Hugging Face ``datasets`` DatasetDict saved to disk
(``datasets.load_from_disk``): what TRL's trainers read."""

import json
from pathlib import Path
from typing import Any

from supertiny.errors import InvalidInputError
from supertiny.store import DatasetItem

FORMATS = ("jsonl", "hf")


def chat_record(item: DatasetItem) -> dict[str, Any]:
    return {"messages": item.messages, "tools": item.tools}


def export_items(items: list[DatasetItem], out: Path, fmt: str) -> list[Path]:
    """Write ``items`` to ``out``; returns the files or folders written."""
    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not items:
        raise InvalidInputError("nothing to export")
    by_split: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        by_split.setdefault(item.split, []).append(chat_record(item))
    if fmt == "jsonl":
        if out.suffix == ".jsonl" and len(by_split) == 1:
            targets = {next(iter(by_split)): out}
        else:
            targets = {split: out / f"{split}.jsonl" for split in by_split}
        for split, path in targets.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w") as handle:
                for record in by_split[split]:
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        return list(targets.values())
    import datasets

    dataset = datasets.DatasetDict({
        split: datasets.Dataset.from_list([_arrow_record(record) for record in records])
        for split, records in by_split.items()
    })
    dataset.save_to_disk(str(out))
    return [out]


def _arrow_record(record: dict[str, Any]) -> dict[str, Any]:
    """One row for Arrow: messages as uniform structs (tool-call arguments stay JSON strings, as in
    OpenAI's format); tool schemas differ in shape from task to task, so they are JSON strings."""
    messages = []
    for message in record["messages"]:
        calls = [{"id": call.get("id", ""), "type": "function",
                  "function": {"name": call["function"]["name"],
                               "arguments": _as_json_string(call["function"].get("arguments", "{}"))}}
                 for call in message.get("tool_calls") or []]
        messages.append({"role": message["role"], "content": message.get("content") or "",
                         "tool_calls": calls, "tool_call_id": message.get("tool_call_id") or ""})
    return {"messages": messages, "tools": [json.dumps(tool) for tool in record["tools"]]}


def _as_json_string(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)
