"""The end of a calibration pass: every row goes to the process that holds its class (point-to-point under
torch.distributed), each held class's rows are indexed as runs, and the per-class vector sums are formed from them in
a fixed order and shared with one exact all-reduce (:func:`finish_stats`; see :mod:`.stats` for why the bits do not
depend on the number of processes).
"""

from __future__ import annotations

import torch

from .. import distributed
from .layerstats import REDUCE_ROWS, CalibrationStats, LayerStats, RowStore
from .observe import Layer

__all__ = ["finish_stats"]


@torch.no_grad()
def finish_stats(
    stats: CalibrationStats,
    layers: list[Layer],
    labels: list[torch.Tensor],
    chunk_of: list[int],
    mine: list[tuple[int, dict[str, torch.Tensor]]],
    fields: list[str],
    world: int,
    me: int,
    sharded: bool,
) -> None:
    """Send rows to their class's owner, index each held class's runs, sum the per-class vectors, fill
    ``stats.per_layer``.

    Args:
        stats: the pass's statistics, ``per_layer`` still empty.
        layers: the observed layers, in row-column order.
        labels: every chunk's kept labels (all ranks read all chunks), in calibration order.
        chunk_of: per entry of ``labels``: its chunk index.
        mine: (chunk, field → (b, Σ N) float32 rows) of the chunks this process ran; emptied as it is read.
        fields: the row fields (``f``, and ``t``/``d`` when collected).
        world: processes sharing the pass (1 when not sharded).
        me: this process's rank.
        sharded: rows go to their class's owner and the vector sums are all-reduced.
    """
    C = stats.num_classes
    y = (torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)).to(torch.int64)
    sizes = [len(t) for t in labels]
    starts = torch.cumsum(torch.tensor([0, *sizes]), 0).tolist()
    chunk_start = dict(zip(chunk_of, starts, strict=False))
    count = torch.bincount(y, minlength=C)  # every rank knows every label: no communication
    owner = torch.arange(C) % world
    held = owner == me
    blocks, block_pos, sends = _route_rows(mine, y, owner, chunk_start, fields, world, me)
    if sharded:
        for pos, part in _exchange(
            sends, y, owner, chunk_of, chunk_start, sizes, fields, sum(la.channels for la in layers), world, me
        ):
            for k in fields:
                blocks[k].append(part[k])
            block_pos.append(pos)
    store = RowStore(blocks, _runs(block_pos, y, C))
    # Per-class vector sums from the rows, in a fixed order: per layer, class c's rows in calibration order, in
    # blocks of REDUCE_ROWS, each a contiguous (rows, N) float64 copy (shapes independent of batch or world size).
    source = {"total": "f", "sumsq": "f", **({"taylor": "t"} if "t" in blocks else {}),
              **({"deeplift": "d"} if "d" in blocks else {})}  # fmt: skip
    mine_classes = [c for c in held.nonzero().squeeze(1).tolist() if int(count[c]) > 0]
    vec = _class_sums(layers, store, source, mine_classes, C)
    store.drop_("t")  # the attribution rows are summed: only the features stay
    store.drop_("d")
    if sharded:
        _all_reduce_sums_(vec, layers, source)
    countf = count.to(torch.float64)
    first = 0
    for la in layers:
        n = la.channels
        v = vec.pop(la.name)
        for name in ("taylor", "deeplift"):
            v.setdefault(name, torch.zeros((), dtype=torch.float64).expand(C, n))  # not collected: zeros, no memory
        stats.per_layer[la.name] = LayerStats(
            count=countf.clone(), store=store, cols=slice(first, first + n), held=held, **v
        )
        first += n


def _route_rows(
    mine: list[tuple[int, dict[str, torch.Tensor]]],
    y: torch.Tensor,
    owner: torch.Tensor,
    chunk_start: dict[int, int],
    fields: list[str],
    world: int,
    me: int,
) -> tuple[dict[str, list[torch.Tensor]], list[torch.Tensor], dict[int, list]]:
    """Split the rows this process computed by their class's owner: (this process's row blocks per field, each
    block's calibration positions, rank → the (positions, rows) to send it). Empties ``mine`` as it goes."""
    blocks: dict[str, list[torch.Tensor]] = {k: [] for k in fields}
    block_pos: list[torch.Tensor] = []  # per block: the calibration positions of its rows (ascending)
    sends: dict[int, list[tuple[torch.Tensor, dict[str, torch.Tensor]]]] = {r: [] for r in range(world)}
    while mine:
        i, rows = mine.pop(0)
        pos = torch.arange(chunk_start[i], chunk_start[i] + len(rows["f"]))
        dest = owner[y[pos]]
        for r in range(world):
            sel = (dest == r).nonzero().squeeze(1)
            if not len(sel):
                continue
            part = {k: v if len(sel) == len(pos) else v.index_select(0, sel) for k, v in rows.items()}
            if r == me:
                for k in fields:
                    blocks[k].append(part[k])
                block_pos.append(pos[sel])
            else:
                sends[r].append((pos[sel], part))
        del rows
    return blocks, block_pos, sends


def _class_sums(
    layers: list[Layer], store: RowStore, source: dict[str, str], classes: list[int], C: int
) -> dict[str, dict[str, torch.Tensor]]:
    """layer → vector field → (C, N) float64 sums over the held ``classes``' rows (``source``: field → row field),
    in blocks of :data:`REDUCE_ROWS` rows, added in order."""
    vec = {la.name: {name: torch.zeros(C, la.channels, dtype=torch.float64) for name in source} for la in layers}
    first = 0
    for la in layers:
        cols, v = slice(first, first + la.channels), vec[la.name]
        for c in classes:
            rows = {k: store.rows(c, cols, k) for k in set(source.values())}
            for start in range(0, len(rows["f"]), REDUCE_ROWS):
                f = rows["f"][start : start + REDUCE_ROWS].to(torch.float64).contiguous()
                v["total"][c] += f.sum(0)
                v["sumsq"][c] += (f * f).sum(0)
                for name in ("taylor", "deeplift"):
                    if name in source:
                        block = rows[source[name]][start : start + REDUCE_ROWS]
                        v[name][c] += block.to(torch.float64).contiguous().sum(0)
        for t in v.values():
            t.add_(0.0)  # -0.0 → +0.0, so that the exact all-reduce below (x + 0 + …) returns the same bits
        first += la.channels
    return vec


def _all_reduce_sums_(vec: dict[str, dict[str, torch.Tensor]], layers: list[Layer], source: dict[str, str]) -> None:
    """Give every rank every class's vector sums: one all-reduce of them all, packed (in place in ``vec``)."""
    packed = torch.cat([t for la in layers for t in vec[la.name].values()], 1)
    distributed.all_reduce_sum_(packed)  # each entry is non-zero on its owner only: exact
    first = 0
    for la in layers:
        for name in source:
            vec[la.name][name] = packed[:, first : first + la.channels].clone()
            first += la.channels
    del packed


def _runs(block_pos: list[torch.Tensor], y: torch.Tensor, classes: int) -> list[list[tuple[int, int, int]]]:
    """Per class, the (block, start, stop) runs of its rows in calibration order."""
    runs: list[list[tuple[int, int, int]]] = [[] for _ in range(classes)]
    if not block_pos:
        return runs
    pos = torch.cat(block_pos)
    block = torch.cat([torch.full((len(p),), b, dtype=torch.int64) for b, p in enumerate(block_pos)])
    row = torch.cat([torch.arange(len(p)) for p in block_pos])
    order = torch.argsort(pos, stable=True)
    order = order[torch.sort(y[pos[order]], stable=True).indices]  # by class, then calibration position
    lab, block, row = y[pos[order]], block[order], row[order]
    if len(lab) == 0:
        return runs
    brk = torch.ones(len(lab), dtype=torch.bool)
    brk[1:] = (lab[1:] != lab[:-1]) | (block[1:] != block[:-1]) | (row[1:] != row[:-1] + 1)
    heads = brk.nonzero().squeeze(1).tolist() + [len(lab)]
    for a, b in zip(heads[:-1], heads[1:], strict=True):
        runs[int(lab[a])].append((int(block[a]), int(row[a]), int(row[b - 1]) + 1))
    return runs


def _exchange(sends, y, owner, chunk_of, chunk_start, sizes, fields, width, world, me):
    """Point-to-point: send every other rank the rows of its classes; return the received (positions, rows) blocks,
    one per source rank, rows in calibration order."""
    import torch.distributed as dist

    cuda = dist.get_backend() == "nccl"
    dev = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    ops, keep = [], []
    for r in range(world):
        if r == me or not sends[r]:
            continue
        buf = torch.cat([torch.cat([p[k] for k in fields], 1) for _, p in sends[r]]).to(dev)
        ops.append(dist.P2POp(dist.isend, buf, r))
        keep.append(buf)
    sends.clear()
    size_of = dict(zip(chunk_of, sizes, strict=True))
    by_src: dict[int, list[torch.Tensor]] = {}
    for i, start in chunk_start.items():  # chunk order: the order the sender packed its rows in
        src = i % world
        if src == me:
            continue
        pos = torch.arange(start, start + size_of[i])
        pos = pos[owner[y[pos]] == me]
        if len(pos):
            by_src.setdefault(src, []).append(pos)
    incoming = []
    for src, parts in sorted(by_src.items()):
        pos = torch.cat(parts)
        buf = torch.empty(len(pos), len(fields) * width, dtype=torch.float32, device=dev)
        ops.append(dist.P2POp(dist.irecv, buf, src))
        incoming.append((pos, buf))
    if ops:
        for req in dist.batch_isend_irecv(ops):
            req.wait()
    del keep
    out = []
    for pos, buf in incoming:
        buf = buf.cpu()
        width = buf.shape[1] // len(fields)
        out.append((pos, {k: buf[:, j * width : (j + 1) * width].clone() for j, k in enumerate(fields)}))
    return out
