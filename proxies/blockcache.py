"""Skip the unchanged prefix of a model when only one layer is perturbed.

Most networks are a trunk of repeated blocks (an ``nn.ModuleList``). Quantizing a layer in
block b leaves blocks 0..b−1 unchanged, so their float outputs are computed once per
calibration batch and replayed; only blocks b.. run again. For the ``measured`` proxy this
halves the work on average, with bit-identical results.

Exported programs (``workers.graphs.ExportedModel``) have no trunk of blocks but a graph whose
layers are ``call_module`` nodes: ``GraphSuffixCache`` re-runs only the graph from the
perturbed layer's first call, from a live state of float values (``prefix_cache`` picks the
cache for a model)."""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator

import torch
import torch.fx as fx
from torch import nn


def find_trunk(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The ModuleList holding the most parameters (≥ 2 blocks), with its qualified name."""
    best, best_n = None, 0
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) >= 2:
            n = sum(p.numel() for p in m.parameters())
            if n > best_n:
                best, best_n = (name, m), n
    return best


class _Replay(nn.Module):
    def __init__(self, cache: "PrefixCache", j: int):
        super().__init__()
        self.cache, self.j = cache, j

    def forward(self, *args, **kwargs):
        return self.cache.outputs[self.cache.current][self.j]


@contextlib.contextmanager
def _blocks_replaced(trunk: nn.ModuleList, stand_ins: dict[int, nn.Module]) -> Iterator[None]:
    """Within the block, ``trunk[j]`` is ``stand_ins[j]``; the blocks are put back afterwards."""
    saved = {j: trunk[j] for j in stand_ins}
    try:
        for j, m in stand_ins.items():
            trunk[j] = m
        yield
    finally:
        for j, blk in saved.items():
            trunk[j] = blk


def trunk_block(trunk_name: str, trunk: nn.ModuleList | None, layer_name: str) -> int:
    """Index of the trunk block containing ``layer_name``; 0 when it is outside the trunk
    (before it or after it: a change there is replayed from nothing)."""
    prefix = f"{trunk_name}." if trunk_name else ""
    if trunk is None or not layer_name.startswith(prefix):
        return 0
    head = layer_name[len(prefix):].split(".", 1)[0]
    return int(head) if head.isdigit() else 0


class PrefixCache:
    """Float outputs of every trunk block for every batch (recorded once)."""

    def __init__(self, model: nn.Module, run_batch, n_batches: int):
        found = find_trunk(model)
        self.name, self.trunk = found if found else ("", None)
        self.outputs: list[list] = []
        self.current = 0
        if self.trunk is None:
            return
        for bi in range(n_batches):
            record: list = [None] * len(self.trunk)
            hooks = [blk.register_forward_hook(lambda m, i, o, j=j: record.__setitem__(j, o)) for j, blk in enumerate(self.trunk)]
            try:
                with torch.no_grad():
                    run_batch(bi)
            finally:
                for h in hooks:
                    h.remove()
            self.outputs.append(record)

    def block_of(self, layer_name: str) -> int:
        """Index of the trunk block containing ``layer_name`` (0 when outside the trunk)."""
        return trunk_block(self.name, self.trunk, layer_name)

    @contextlib.contextmanager
    def skip_until(self, b: int) -> Iterator[None]:
        """Within the block, blocks 0..b−1 replay their cached outputs (set ``current`` per batch)."""
        if self.trunk is None or b == 0:
            yield
            return
        with _blocks_replaced(self.trunk, {j: _Replay(self, j) for j in range(b)}):
            yield


def _nbytes(obj) -> int:
    """Bytes held by the tensors of a block's output (a tensor, or a tuple/list/dict of them)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_nbytes(o) for o in obj.values())
    return 0


class _Gate(nn.Module):
    """Stands in for trunk block ``j`` during a judge's run: before the current batch's start it
    replays the policy's output of this block, from there it runs (and records) the block."""

    def __init__(self, trunk: "PolicyTrunk", j: int, block: nn.Module):
        super().__init__()
        self.trunk, self.j, self.block = trunk, j, block

    def forward(self, *args, **kwargs):
        t = self.trunk
        if self.j < t.start:
            return t._rec[t.current][self.j]
        out = self.block(*args, **kwargs)
        t._rec[t.current][self.j] = out
        return out


class PolicyTrunk:
    """Trunk block outputs of one *policy* (not float) per batch, for judges that measure many
    policies each a small change from the last accepted one: a candidate that changes only
    layers in blocks ≥ b replays blocks 0..b−1 from the base policy's outputs and runs the
    rest, with bit-identical results. The base moves when the judge accepts a candidate, from
    what that candidate's own run recorded (no extra pass).

    Refine's candidates come in families: a move pairs one change with many others, so many
    candidates share their first changed block's change. The outputs a candidate computes while
    only that first change is in effect (up to the block before its next change) are kept in a
    side store keyed by the formats of every layer up to that block (``prefix``), and a later
    candidate with the same prefix starts after it. Keys are the policy's content, so entries
    stay valid when the base moves; the store drops its least recently used entries past
    ``side_bytes``.

    Memory of the base is one output per block per batch; when the first recording exceeds
    ``max_bytes`` the cache turns itself off (``enabled`` False) and every run is a full one."""

    def __init__(self, model: nn.Module, n_batches: int, max_bytes: int = 2 << 30, side_bytes: int = 256 << 20):
        found = find_trunk(model)
        self.name, self.trunk = found if found else ("", None)
        self.enabled = self.trunk is not None
        self.n_batches, self.max_bytes, self.side_bytes = n_batches, max_bytes, side_bytes
        self.outputs: list[list] = []  # [batch][block] outputs of the base policy ([] until recorded)
        self.side: OrderedDict[tuple, object] = OrderedDict()  # (batch, block, prefix) → that block's output
        self._side_used = 0
        self.current = 0  # the batch being run
        self.start = 0  # the first block the current batch computes
        self._rec: list[list] = []
        self._keys: list[bytes] = []  # the running policy's formats of each block's layers
        self._base_keys: list[bytes] | None = None  # the base policy's (None: no base recorded)
        self._changed: list[int] | None = None
        self._prefix: list[tuple] = []

    @property
    def n_blocks(self) -> int:
        return 0 if self.trunk is None else len(self.trunk)

    def block_of(self, layer_name: str) -> int:
        return trunk_block(self.name, self.trunk, layer_name)

    @contextlib.contextmanager
    def running(self, keys: list[bytes]) -> Iterator[None]:
        """Within the block, a run of one policy: ``keys[j]`` is the policy's formats of the
        layers in trunk block j, as bytes (layers outside the trunk count as block 0's: a
        change there is replayed from nothing). The trunk compares them with the base policy's
        to find the changed blocks. Call ``begin`` per batch."""
        if not self.enabled:
            yield
            return
        base = self._base_keys
        self._changed = None if base is None else [j for j, (k, b) in enumerate(zip(keys, base)) if k != b]
        self._keys = keys
        self._prefix = [tuple(keys[:j + 1]) for j in range(len(keys))]
        self._rec = [[None] * self.n_blocks for _ in range(self.n_batches)]
        self.start = 0
        try:
            with _blocks_replaced(self.trunk, {j: _Gate(self, j, self.trunk[j]) for j in range(self.n_blocks)}):
                yield
        finally:
            self._keep_shared()

    def begin(self, batch: int) -> int:
        """Start batch ``batch`` of the current run; returns the first block it computes."""
        self.current = batch
        if not self.enabled or self._changed is None:
            self.start = 0
            return 0
        base = min(self._changed, default=self.n_blocks)
        rec, start = self._rec[batch], base
        rec[:base] = self.outputs[batch][:base]
        # every replayed block returns its own output (a model may add it to a residual stream
        # outside the block), so the store must hold each block from the first changed one on
        while start < self.n_blocks and (key := (batch, start, self._prefix[start])) in self.side:
            self.side.move_to_end(key)
            rec[start] = self.side[key]
            start += 1
        self.start = start
        return start

    def _keep_shared(self) -> None:
        """Side-store the outputs the last run computed with at most one changed block in
        effect: only those can be shared by another candidate."""
        if self._changed is None or len(self._changed) < 2 or self.side_bytes <= 0:
            return  # no base, or a change in one block: every output it computed is its own
        for bi, row in enumerate(self._rec):
            for j in range(self._changed[0], self._changed[1]):
                key = (bi, j, self._prefix[j])
                if row[j] is None or key in self.side:
                    continue
                self.side[key] = row[j]
                self._side_used += _nbytes(row[j])
        while self._side_used > self.side_bytes and self.side:
            _, out = self.side.popitem(last=False)
            self._side_used -= _nbytes(out)

    def accept(self) -> None:
        """The last run (over every batch) becomes the base policy."""
        if not self.enabled or not self._rec:
            return
        new, self._rec = self._rec, []
        self.outputs, self._base_keys = [], None
        if any(o is None for row in new for o in row):  # an incomplete run: start afresh next time
            return
        if sum(_nbytes(o) for row in new for o in row) > self.max_bytes:
            self.enabled = False
            return
        self.outputs, self._base_keys = new, self._keys


# ---------------------------------------------------------------- graph programs (torch.export)

# Tests and benchmarks turn this off to compare against plain full runs.
GRAPH_SUFFIX = True


def is_graph_model(model: nn.Module) -> bool:
    """A model that runs an fx program in calls of ``self._run(chunk)``, as
    ``workers.graphs.ExportedModel`` does (duck-typed: proxies never import workers)."""
    return isinstance(model.__dict__.get("program"), fx.GraphModule) and callable(getattr(type(model), "_run", None))


def prefix_cache(model: nn.Module, run_batch, n_batches: int):
    """The prefix cache for ``model``: graph suffixes for an exported program, trunk blocks
    otherwise. Both have ``name``, ``current``, ``block_of`` and ``skip_until``."""
    if is_graph_model(model):
        return GraphSuffixCache(model, run_batch, n_batches, enabled=GRAPH_SUFFIX)
    return PrefixCache(model, run_batch, n_batches)


def _span(t: torch.Tensor) -> tuple[int, int, int]:
    """(storage address, first byte, end byte) of the memory a tensor reads."""
    extent = 1 + sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride())) if t.numel() else 0
    start = t.storage_offset() * t.element_size()
    return t.untyped_storage().data_ptr(), start, start + extent * t.element_size()


def _shares_memory(a: object, w: torch.Tensor) -> bool:
    """``a`` is ``w`` or a tensor overlapping its memory (a view, an alias)."""
    if not isinstance(a, torch.Tensor):
        return False
    if a is w:
        return True
    try:
        (pa, a0, a1), (pw, w0, w1) = _span(a), _span(w)
    except (RuntimeError, NotImplementedError):  # tensors without storage (meta, sparse, …)
        return False
    return pa == pw != 0 and a0 < w1 and w0 < a1


class GraphSuffixCache:
    """The prefix cache for an exported program (no trunk of blocks, but a graph whose layers
    are ``call_module`` nodes). Perturbing a layer changes nothing before the first node that
    computes from its weight (the first call of its module, or the first user of a ``get_attr``
    reading it), so only the graph suffix from that position p runs again; every value the
    suffix reads from before p comes from the float run.

    Per calibration batch, and per program call within it (the model runs the program on
    chunks of the batch), the cache keeps the *live state* at the current position: the
    float values of the nodes before p that some node at or after p reads. Moving to a later
    position runs the float nodes in between and drops the values no longer read, so memory
    stays one cut through the network per chunk (not every node's output); a position before
    the current one starts again from the inputs (``skip_until`` callers should go in graph
    order: ``block_of`` is that order). The state is computed with the weights the model has
    when ``skip_until`` is entered.

    While skipping, ``model(x)`` with the recorded input of batch ``current`` runs the model's
    own forward (shape check, dtype cast, chunking, padding, merging, so the output's
    structure is the program's), with each program call replaced by the suffix on that
    chunk's state; any other input runs in full. Results are bit-identical to full runs."""

    def __init__(self, model: nn.Module, run_batch, n_batches: int, enabled: bool = True):
        self.model, self.current = model, 0
        self.gm: fx.GraphModule = model.__dict__["program"]
        self.name = "graph" if enabled else ""
        self.enabled = enabled
        self._positions: dict[str, int] = {}
        if not enabled:
            return
        self.nodes = list(self.gm.graph.nodes)
        pos = {n: i for i, n in enumerate(self.nodes)}
        self._placeholders = [n for n in self.nodes if n.op == "placeholder"]
        self._slot = {n: j for j, n in enumerate(self._placeholders)}
        # values die after their last reader (nodes nobody reads die at once)
        self._dies_at: list[list[fx.Node]] = [[] for _ in self.nodes]
        for n in self.nodes:
            self._dies_at[max([pos[u] for u in n.users], default=pos[n])].append(n)
        self._pos = pos
        self.inputs: list[torch.Tensor | None] = [None] * n_batches  # the model's input per batch
        self.flat: list[list[list]] = [[] for _ in range(n_batches)]  # flat program inputs per chunk
        self._sink: list | None = None
        self._replay: list | None = None
        self._recording = -1
        try:
            self._patch(record=True)
            with torch.no_grad():
                for bi in range(n_batches):
                    self._recording = bi
                    run_batch(bi)
        finally:
            self._recording = -1
            self._unpatch()
        self.at = 0
        self.states: list[list[dict]] = [[{} for _ in chunks] for chunks in self.flat]

    # -- positions

    def block_of(self, layer_name: str) -> int:
        """The graph position where perturbing ``layer_name`` starts to matter (0: run in full)."""
        if not self.enabled:
            return 0
        if layer_name not in self._positions:
            self._positions[layer_name] = self._first_reader(layer_name)
        return self._positions[layer_name]

    def _first_reader(self, layer_name: str) -> int:
        try:
            w = self.model.get_submodule(layer_name).weight
        except AttributeError:
            return 0
        if not isinstance(w, torch.Tensor):
            return 0

        def holds(obj) -> bool:
            if isinstance(obj, nn.Module):
                return any(_shares_memory(t, w) for t in (*obj.parameters(), *obj.buffers()))
            return _shares_memory(obj, w)

        first = None
        for i, n in enumerate(self.nodes):
            if n.op == "call_module" and holds(self.gm.get_submodule(n.target)):
                at = [i]
            elif n.op == "get_attr" and holds(self._attr(n.target)):
                at = [self._pos[u] for u in n.users]  # the reference itself is unchanged
            else:
                continue
            if at:
                first = min(at) if first is None else min(first, *at)
        if first is None or any(self._pos[p] >= first for p in self._placeholders):
            return 0
        return first

    # -- running nodes

    def _attr(self, target: str):
        obj = self.gm
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj

    def _run_nodes(self, env: dict, start: int, stop: int, flat: list):
        """Run nodes start..stop−1 into ``env`` (dropping values after their last reader);
        the program's output (structured as the program returns it) if the output node ran."""
        load = env.__getitem__
        for i in range(start, stop):
            n = self.nodes[i]
            op = n.op
            if op == "placeholder":
                env[n] = flat[self._slot[n]]
            elif op == "get_attr":
                env[n] = self._attr(n.target)
            elif op == "output":
                return self.gm.graph.process_outputs(fx.node.map_arg(n.args[0], load))
            else:
                args, kwargs = fx.node.map_arg(n.args, load), fx.node.map_arg(n.kwargs, load)
                if op == "call_module":
                    env[n] = self.gm.get_submodule(n.target)(*args, **kwargs)
                elif op == "call_function":
                    env[n] = n.target(*args, **kwargs)
                elif op == "call_method":
                    env[n] = getattr(args[0], n.target)(*args[1:], **kwargs)
                else:
                    raise RuntimeError(f"graph suffix: unknown node op {op!r}")
            for d in self._dies_at[i]:
                env.pop(d, None)
        return None

    def _advance(self, p: int) -> None:
        """Bring every live state to position ``p`` (from the inputs when p is behind)."""
        if p < self.at:
            self.states = [[{} for _ in chunks] for chunks in self.flat]
            self.at = 0
        if p == self.at:
            return
        with torch.no_grad():
            for bi, chunks in enumerate(self.flat):
                for j, flat in enumerate(chunks):
                    self._run_nodes(self.states[bi][j], self.at, p, flat)
        self.at = p

    # -- the model's forward while recording / skipping

    def _patch(self, record: bool) -> None:
        model, cls = self.model, type(self.model)
        run = cls._run.__get__(model)

        def forward(*args, **kwargs):
            x = args[0] if args else next(iter(kwargs.values()), None)
            if record:
                bi = self._recording
                if bi < 0 or self.inputs[bi] is not None:
                    return cls.forward(model, *args, **kwargs)
                self.inputs[bi], self._sink = x, []
                try:
                    return cls.forward(model, *args, **kwargs)
                finally:
                    self.flat[bi], self._sink = self._sink, None
            bi = self.current
            if not (0 <= bi < len(self.inputs) and x is not None and self.inputs[bi] is x):
                return cls.forward(model, *args, **kwargs)  # not a recorded batch: in full
            self._replay = [bi, 0]
            try:
                return cls.forward(model, *args, **kwargs)
            finally:
                self._replay = None

        def _run(chunk):
            if self._sink is not None:
                self._sink.append(list(self.gm.graph.process_inputs(chunk)))
                return run(chunk)
            if self._replay is None:
                return run(chunk)
            bi, j = self._replay
            self._replay[1] += 1
            flat = self.flat[bi]
            if j >= len(flat) or tuple(flat[j][0].shape) != tuple(chunk.shape):
                raise RuntimeError("graph suffix: the program was called on other chunks than when recorded")
            return self._run_nodes(dict(self.states[bi][j]), self.at, len(self.nodes), flat[j])

        object.__setattr__(model, "forward", forward)
        object.__setattr__(model, "_run", _run)

    def _unpatch(self) -> None:
        for attr in ("forward", "_run"):
            self.model.__dict__.pop(attr, None)

    @contextlib.contextmanager
    def skip_until(self, p: int) -> Iterator[None]:
        """Within the block, ``model(x)`` for batch ``current`` runs the graph from position p."""
        if not self.enabled or p <= 0:
            yield
            return
        self._advance(p)
        self._patch(record=False)
        try:
            yield
        finally:
            self._unpatch()
