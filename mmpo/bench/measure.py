"""What the bench and compare_trl.py measure alike: the built-in shapes, and the memory a call adds
at its peak; what a step's graph keeps for the backward (``SavedForBackward``); the bench's clock, which lets every measurement take turns; and the token positions a
batch costs the language model (``lm_positions``)."""
import contextlib
import ctypes
import gc
import time

import torch
from torch.utils import flop_counter as fc
from torch.utils._python_dispatch import TorchDispatchMode

from mmpo.logps import prefix_groups

# the shapes benchmarked without --model: the tiny model as the tests build it; the same model with
# LLaVA-1.5's proportions (336 px / 14 px patches = 576 image tokens, 32000 words), where the output
# layer outweighs the toy-width body; and "body", LLaVA-1.5-7B's language model at a quarter of its
# width (hidden 1024, MLP 2752, head size 128) and 4 layers, where the body outweighs it as at 7B
SHAPES = {"tiny": {}, "llava-1.5": dict(size=336, patch=14, vocab_size=32000),
          "body": dict(size=336, patch=14, vocab_size=32000,
                       text=dict(hidden_size=1024, intermediate_size=2752, num_attention_heads=8, num_key_value_heads=8))}
# each shape's answers, in tokens (the tiny models' tokenizer: one per character); 0: the synthetic data's own
ANSWER_TOKENS = {"tiny": 0, "llava-1.5": 64, "body": 200}


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


class AddedPeak:
    """What the code run between ``start()`` and ``stop()`` adds at its peak to the memory that
    lives before it, in bytes (``.bytes``): CUDA's max allocated; on Linux the peak RSS, restarted
    from the RSS once freed memory is handed back to the system; elsewhere None."""

    def __init__(self, device):
        self.device, self.base, self.bytes = device, None, None

    def start(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # what was freed leaves the RSS: it is then what lives
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # the peak RSS (VmHWM) restarts from the current RSS
            self.base = _status_kb("VmRSS") * 1024
        except (OSError, AttributeError, StopIteration):
            self.base = None

    def stop(self):
        if self.base is None:
            self.bytes = None
        elif self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.bytes = _status_kb("VmHWM") * 1024 - self.base
        return self.bytes


def peak_memory(fn, device) -> tuple[int | None, int | None]:
    """What one call of ``fn`` adds at its peak to the memory that lives before it (``AddedPeak``),
    and the peak itself, what lived before included (the process's RSS; CUDA: allocated); bytes."""
    peak = AddedPeak(device)
    peak.start()
    fn()
    added = peak.stop()
    return added, None if added is None else peak.base + added


class SavedForBackward(contextlib.AbstractContextManager):
    """The bytes the autograd graph keeps for the backward pass of what runs inside (``.bytes``):
    every distinct storage a tensor saved for backward lives in, counted once, the storages of
    ``exclude`` (the parameters, which live anyway) left out. Read through saved-tensor hooks, so
    what an activation-checkpointed region keeps is not seen."""

    def __init__(self, exclude):
        self.exclude = {p.untyped_storage().data_ptr() for p in exclude}
        self.seen, self.bytes = set(), 0
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda x: x)

    def pack(self, x):
        storage = x.untyped_storage()
        if storage.data_ptr() not in self.exclude and storage.data_ptr() not in self.seen:
            self.seen.add(storage.data_ptr())
            self.bytes += storage.nbytes()
        return x

    def __enter__(self):
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        return self.hooks.__exit__(*exc)


class Flops(TorchDispatchMode):
    """The floating-point operations of the matrix products and attentions run inside (``.total``),
    by torch's FLOP formulas (``torch.utils.flop_counter``): 2 per multiply-add, an attention over
    all its query x key pairs whatever its mask (what a masked kernel computes; a causal one skips
    about half). Extended here to the CPU's flash-attention kernels, which they lack. A bare
    dispatch mode: torch's FlopCounterMode also tracks modules, and its hooks undo what activation
    checkpointing saves of memory (the body shape's checkpointed floor peaked at 2414-2473 MiB
    counted by it, 1441-1514 by this, 1352-1443 uncounted), so the bench counts after its clock
    and its peaks, in calls of their own (compare_trl.py: in TRL's warm-up step)."""

    def __init__(self):
        super().__init__()
        cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        if cpu not in fc.flop_registry:
            fc.register_flop_formula(cpu)(lambda q, k, v, *a, out_shape=None, **kw: fc.sdpa_flop_count(q, k, v))
            fc.register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)(
                lambda g, q, k, v, *a, out_shape=None, **kw: fc.sdpa_backward_flop_count(g, q, k, v))
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = fc.flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def interleaved_times(fns: dict, device, steps: int) -> dict[str, list[float]]:
    """``steps`` timings (seconds) of each of ``fns``, taking turns: a slow spell of a shared
    machine, or what one leaves behind in the allocator, falls on every one of them alike."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {k: [] for k in fns}
    for _ in range(steps):
        for k, fn in fns.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t)
    return times


def lm_positions(batch, share_prefix: bool) -> int:
    """Token positions the language model processes for ``batch`` (padding included)."""
    P, R = batch.prompt_len, batch.response_mask.shape[1]
    if not share_prefix:
        return len(batch.image_index) * (P + R)
    return sum(P + len(rows) * R for rows in prefix_groups(batch))  # each group as many blocks as views
