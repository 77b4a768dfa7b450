"""The new version's tables: catalogue, codes, embeddings, sequences and splits (no decoding)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from semconv.artifacts import RunDir
from semconv.codes import item_codes_table, read_item_codes
from semconv.embed.supplied import embedding_table
from semconv.protocol import split_bounds
from semconv.refresh.codes import assign_new_codes, load_tokenizer
from semconv.refresh.delta import Delta, read_delta
from semconv.refresh.embeddings import fold_in_features, learn_map, neighbour_map, ridge_map, user_profiles
from semconv.refresh.histories import extend_sequences
from semconv.refresh.user_files import UserFiles, known_users, read_users, user_files


@dataclass
class NewVersion:
    items: pa.Table
    item_codes: pa.Table
    item_emb: pa.Table
    item_text_emb: pa.Table | None
    sequences: pa.Table  # the touched users' rows of the new sequences/ (every other row is the base's)
    splits: pa.Table  # ... and their split bounds
    touched: np.ndarray  # users named in the delta
    new_users: np.ndarray  # of those, the users new to the run
    base_sequences: UserFiles  # the base's sequences/ files (footers read once per refresh)
    new_items: dict = field(default_factory=dict)  # what the manifest says about the new items
    skipped: dict = field(default_factory=dict)


def _matrix(table: pa.Table) -> np.ndarray:
    """``embedding`` rows of an ``item_emb``-shaped table sorted by item id, as float32."""
    table = table.sort_by("item_id")
    col = table.column("embedding").combine_chunks()
    return col.flatten().to_numpy().astype(np.float32).reshape(table.num_rows, -1)


def _list_parts(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    arr = pc.fill_null(col.combine_chunks(), pa.scalar([], col.type))
    offsets = arr.offsets.to_numpy()
    return offsets - offsets[0], arr.values.slice(offsets[0], offsets[-1] - offsets[0]).to_numpy()


def _text_embeddings(cfg, items: pa.Table) -> np.ndarray:
    """LLM text embeddings of ``items`` by the embed stage's recipe, in this process."""
    from semconv.embed.text import TextEmbedder
    from semconv.models import resolve

    out = TextEmbedder(str(resolve(cfg.embed.text_model)), cfg.embed.text_max_tokens)(
        items.select(["item_id", "title", "description"]))
    return _matrix(out.select(["item_id", "embedding"]))


def new_item_embeddings(cfg, delta: Delta, emb: np.ndarray, text_emb: np.ndarray | None,
                        new_text: np.ndarray | None, map_histories: Callable[[], pa.Table],
                        new_sequences: pa.Table, first_code) -> tuple[np.ndarray, np.ndarray, dict]:
    """Behaviour vectors of the delta's items (module doc of ``refresh.embeddings``) and their
    source per item (``supplied`` / ``fold_in`` / ``text``), with the maps' measured agreement.
    ``map_histories()``: the existing users' histories the fold-in map learns from (read only
    when some new item is folded in); ``new_sequences``: the delta users' new rows."""
    rc, m, n_old = cfg.refresh, delta.num_items, len(emb)
    out = delta.supplied.copy()
    source = np.where(delta.has_supplied, "supplied", "").astype(object)
    maps: dict = {}
    todo = ~delta.has_supplied
    if todo.any() and len(delta.item_ids):
        # fold-in features of the new items from their delta users' (new) histories
        ids = new_sequences.column("user_id").to_numpy()
        offsets, flat = _list_parts(new_sequences.column("history"))
        sums, counts = user_profiles(offsets, flat, emb)
        is_new = delta.item_ids >= n_old
        rows = np.searchsorted(ids, delta.user_ids[is_new])
        feats, has = fold_in_features(rows, delta.item_ids[is_new] - n_old, sums, counts, m)
        fold = todo & has
        if fold.any():
            o_off, o_flat = _list_parts(map_histories().column("history"))
            o_sums, o_counts = user_profiles(o_off, o_flat, emb)
            owner = np.repeat(np.arange(len(o_off) - 1), np.diff(o_off))
            ok = o_flat < n_old
            x, usable = fold_in_features(owner[ok], o_flat[ok], o_sums, o_counts, n_old, emb)
            predict, rep = learn_map("fold_in", x, emb, usable, first_code, rc.holdout, ridge_map(rc.ridge), cfg.seed)
            out[fold] = predict(feats[fold])
            source[fold] = "fold_in"
            maps["fold_in"] = rep.as_dict()
        todo &= ~fold
    if todo.any():
        if text_emb is None or new_text is None:
            raise ValueError(
                f"{int(todo.sum())} new items have neither an embedding nor interactions in the delta, and "
                "the run has no item_text_emb/ to map their text from: supply an 'embedding' column")
        predict, rep = learn_map("text", text_emb, emb, np.ones(n_old, bool), first_code, rc.holdout,
                                 neighbour_map(rc.text_neighbours), cfg.seed)
        out[todo] = predict(new_text[todo])
        source[todo] = "text"
        maps["text"] = rep.as_dict()
    counts = {s: int((source == s).sum()) for s in ("supplied", "fold_in", "text")}
    return out, source, {"embedding_source": counts, "maps": maps}


def map_sample(files: UserFiles, limit: int, seed: int) -> np.ndarray:
    """The user ids the fold-in map learns from: all of them up to ``limit``, else a seeded
    sample of ``limit`` (the map has 2 x d numbers to fit; a bounded sample keeps a refresh's
    memory independent of the number of users)."""
    ids = np.arange(files.max_user + 1, dtype=np.int64)
    if len(ids) <= limit:
        return ids
    return np.sort(np.random.default_rng(seed).choice(ids, size=limit, replace=False))


def build_version(cfg, run: RunDir, base: RunDir) -> NewVersion:
    """Read the delta against ``base`` and build every table of the new version that changes
    whole (catalogue, codes, embeddings) and the delta users' rows of the user tables."""
    items = base.read_table("items").sort_by("item_id")
    seq_files = user_files(base, "sequences")
    emb = _matrix(base.read_table("item_emb", columns=["item_id", "embedding"]))
    old_ids, old_codes = read_item_codes(base)
    order = np.argsort(old_ids)
    old_ids, old_codes = old_ids[order], old_codes[order]
    delta = read_delta(cfg.refresh, items, known_users(seq_files), emb.shape[1])
    new_ids = delta.items.column("item_id").to_numpy()

    old_rows = read_users(seq_files, delta.user_ids)  # the known delta users' histories, nobody else's
    new_seqs, touched, repeats = extend_sequences(old_rows, delta.user_ids, delta.item_ids, delta.timestamps,
                                                  delta.new_users)
    tokenizer = load_tokenizer(run.local("codebook"), old_ids, old_codes)
    text_emb = new_text = None
    if base.is_complete("item_text_emb"):
        text_emb = _matrix(base.read_table("item_text_emb", columns=["item_id", "embedding"]))
        new_text = _text_embeddings(cfg, delta.items) if delta.num_items else np.zeros((0, text_emb.shape[1]), np.float32)
    sample = map_sample(seq_files, cfg.refresh.map_users, cfg.seed)
    vecs, source, info = new_item_embeddings(
        cfg, delta, emb, text_emb, new_text, lambda: read_users(seq_files, sample, ["user_id", "history"]),
        new_seqs, lambda e: tokenizer(e)[:, 0])
    codes, clash = assign_new_codes(tokenizer, vecs)
    info.update(count=int(delta.num_items), item_ids=new_ids.tolist(),
                source_ids=delta.items.column("source_id").to_pylist(), source_of=list(source),
                codes=codes.tolist(), collided=int((clash >= 0).sum()),
                collision_rule="raw nearest-code tuple when free, else the nearest free tuple (beam "
                               "search); existing codes never change; earlier delta rows win")
    if "fold_in" in info["maps"]:
        info["maps"]["fold_in"]["users"] = int(len(sample))
    skipped = dict(delta.skipped)
    if repeats:
        skipped["duplicate_interaction"] = skipped.get("duplicate_interaction", 0) + repeats
    return NewVersion(
        items=pa.concat_tables([items, delta.items.cast(items.schema)]),
        item_codes=item_codes_table(np.r_[old_ids, new_ids], np.concatenate([old_codes, codes]).reshape(-1, old_codes.shape[1])),
        item_emb=embedding_table(np.concatenate([emb, vecs])),
        item_text_emb=None if text_emb is None else embedding_table(np.concatenate([text_emb, new_text])),
        sequences=new_seqs, splits=split_bounds(new_seqs),
        touched=touched, new_users=delta.new_users.column("user_id").to_numpy(), base_sequences=seq_files,
        new_items=info, skipped=skipped,
    )
