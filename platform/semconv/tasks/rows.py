"""The ``sft/`` row schema and a small column buffer that every task builder fills."""

from __future__ import annotations

import pyarrow as pa

SFT_SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("prompt", pa.string()),
        ("label", pa.string()),
        ("split", pa.string()),
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
    ]
)


class Rows:
    """Append rows column-wise, then :meth:`table` gives them in the ``sft/`` schema."""

    def __init__(self) -> None:
        self.cols: dict[str, list] = {f.name: [] for f in SFT_SCHEMA}

    def add(
        self, task: str, prompt: str, label: str, split: str = "train",
        user_id: int | None = None, item_id: int | None = None,
    ) -> None:
        c = self.cols
        c["task"].append(task)
        c["prompt"].append(prompt)
        c["label"].append(label)
        c["split"].append(split)
        c["user_id"].append(None if user_id is None else int(user_id))
        c["item_id"].append(None if item_id is None else int(item_id))

    def __len__(self) -> int:
        return len(self.cols["task"])

    def table(self) -> pa.Table:
        return pa.table(self.cols, schema=SFT_SCHEMA)


def empty_table() -> pa.Table:
    return SFT_SCHEMA.empty_table()
