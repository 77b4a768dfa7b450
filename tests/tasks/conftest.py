"""A hand-made catalogue for the tasks stage: 3 users, 6 items, hand-written 3-level codes.

Users (full histories, oldest first) and their leave-last-out rows:
  user 0: 0 1 2 3   train [0]->1            valid [0 1]->2    test [0 1 2]->3
  user 1: 3 4 5 0 2 train [3]->4, [3 4]->5  valid [3 4 5]->0  test [3 4 5 0]->2
  user 2: 5 4 1 3   train [5]->4            valid [5 4]->1    test [5 4 1]->3
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest

from semconv.artifacts import RunDir
from semconv.protocol import split_bounds

CODES = {0: (0, 0, 0), 1: (0, 1, 0), 2: (1, 0, 0), 3: (1, 0, 1), 4: (2, 1, 0), 5: (2, 2, 1)}
HISTORIES = {0: [0, 1, 2, 3], 1: [3, 4, 5, 0, 2], 2: [5, 4, 1, 3]}
REVIEWS = {
    0: ["accurate thermometer", "", "fits well", "good wrench"],  # last two are held out
    1: ["", "kit works", "sticky tape", "held out", "held out"],
    2: [".", "", "held out", "held out"],
}
ITEMS = [
    # title, description, brand, categories
    ("Digital Lab Thermometer", "Reads the temperature of liquids fast.", "Acme",
     "Industrial & Scientific,Lab,Thermometers"),
    ("Glass Lab Bottle", ".", "Pyrex", "Industrial & Scientific,Lab,Bottles"),
    ("Nitrile Safety Gloves", "", "", "Industrial & Scientific,Safety,Gloves"),
    ("Steel Torque Wrench", "Steel wrench with a torque scale for bolts.", "Acme",
     "Industrial & Scientific,Tools,Wrenches"),
    ("Relay Capacitor Start Kit", "Hard start kit for compressors.", "Supco",
     "Industrial & Scientific,Electrical,Capacitors"),
    ("Heavy Duct Tape", "Strong waterproof tape.", "Gorilla", "Industrial & Scientific,Tape"),
]
SPLITS = [  # (split, user, history, target)
    ("train", 0, [0], 1), ("valid", 0, [0, 1], 2), ("test", 0, [0, 1, 2], 3),
    ("train", 1, [3], 4), ("train", 1, [3, 4], 5), ("valid", 1, [3, 4, 5], 0),
    ("test", 1, [3, 4, 5, 0], 2),
    ("train", 2, [5], 4), ("valid", 2, [5, 4], 1), ("test", 2, [5, 4, 1], 3),
]


def make_tables(reviews: bool = False, codes: dict | None = None) -> dict[str, pa.Table]:
    codes = CODES if codes is None else codes
    items = pa.table({
        "item_id": pa.array(range(len(ITEMS)), pa.int64()),
        "source_id": [f"I{i}" for i in range(len(ITEMS))],
        "title": [i[0] for i in ITEMS], "description": [i[1] for i in ITEMS],
        "brand": [i[2] for i in ITEMS], "categories": [i[3] for i in ITEMS],
    })
    users = sorted(HISTORIES)
    seq = {
        "user_id": pa.array(users, pa.int64()),
        "source_user_id": [f"U{u}" for u in users],
        "history": pa.array([HISTORIES[u] for u in users], pa.list_(pa.int64())),
    }
    if reviews:
        seq["reviews"] = pa.array([REVIEWS[u] for u in users], pa.list_(pa.string()))
    splits = split_bounds(pa.table(seq))  # whose rows are SPLITS
    ids = sorted(codes)
    width = len(codes[ids[0]])
    item_codes = pa.table({
        "item_id": pa.array(ids, pa.int64()),
        "codes": pa.FixedSizeListArray.from_arrays(
            pa.array([c for i in ids for c in codes[i]], pa.int16()), width),
    })
    return {"items": items, "sequences": pa.table(seq), "splits": splits, "item_codes": item_codes}


def write_run(path: Path, tables: dict[str, pa.Table]) -> RunDir:
    run = RunDir(path)
    for name, table in tables.items():
        run.write_table(name, table)
    return run


@pytest.fixture
def tables() -> dict[str, pa.Table]:
    return make_tables()


@pytest.fixture
def review_tables() -> dict[str, pa.Table]:
    return make_tables(reviews=True)


@pytest.fixture
def toy() -> SimpleNamespace:
    """The catalogue's constants and builders (test modules get them here, not by import)."""
    return SimpleNamespace(
        codes=CODES, histories=HISTORIES, reviews=REVIEWS, items=ITEMS, splits=SPLITS,
        make_tables=make_tables, write_run=write_run,
    )
