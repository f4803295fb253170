"""The Lance indexes on a tag index's tables, built when a writer is done: IVF-PQ on the embeddings for search
(from ``ANN_MIN_ROWS``), and a BTREE on video_id in both tables for one video's rows without a scan. Rows added
later are searched beside an index, and folded in once they pass a tenth of the indexed ones."""
from __future__ import annotations

import lance

from .index import VECTOR_INDEX, TagIndex

ANN_MIN_ROWS = 100_000  # below this search is exact (a scan); from here on an IVF-PQ index answers it
LOOKUP_INDEX = "video_id_idx"
# IVF partitions of ~32k rows: k-means stays cheap on a few cores even at 10^7 rows
ROWS_PER_PARTITION = 32_768


def build_indexes(index: TagIndex) -> None:
    """What a writer runs when it is done: the vector index (from ``ANN_MIN_ROWS``) and the lookup indexes."""
    build_vector_index(index)
    build_lookup_indexes(index)


def build_lookup_indexes(index: TagIndex) -> bool:
    """A BTREE index on video_id in each table, created or given a delta for the rows added since; returns whether
    an index changed."""
    changed = []
    for name in index.TABLES:
        ds = index.table(name)
        if ds is None:
            continue
        found = [i for i in ds.describe_indices() if i.name == LOOKUP_INDEX]
        rows = ds.count_rows()
        if not found:
            ds.create_scalar_index("video_id", "BTREE", name=LOOKUP_INDEX)
        elif (rows - found[0].num_rows_indexed) * 10 >= rows:
            ds.optimize.optimize_indices(num_indices_to_merge=0)  # every index of the table gets a delta
        else:
            continue
        changed.append(name)
    if changed:
        index.record_change(changed)
    return bool(changed)


def build_vector_index(index: TagIndex, force: bool = False) -> bool:
    """An IVF-PQ index on the embeddings once there are ``ANN_MIN_ROWS`` (or ``force``), or a delta for the rows
    added since; returns whether the index changed."""
    ds = index.table("embeddings")
    rows = index.count("embeddings")
    if ds is None or (rows < ANN_MIN_ROWS and not force):
        return False
    indexed = index.indexed_rows()
    if indexed is not None:
        if (rows - indexed) * 10 < rows:
            return False
        ds.optimize.optimize_indices(num_indices_to_merge=0)  # a delta index for the new rows: seconds, not a re-merge
    else:
        create_vector_index(ds, rows, index.state.dim)
    index.record_change(["embeddings"])
    return True


def create_vector_index(ds: lance.LanceDataset, rows: int, dim: int) -> None:
    """The IVF-PQ index search uses, on a table's ``vector`` column of ``rows`` ``dim``-wide vectors (also what the
    retrieval benchmark measures its recall with)."""
    ds.create_index("vector", "IVF_PQ", name=VECTOR_INDEX, metric="cosine",
                    num_partitions=max(8, rows // ROWS_PER_PARTITION), num_sub_vectors=dim // 8)
