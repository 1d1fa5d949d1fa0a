"""mmpo: multimodal preference optimization (DPO, mDPO, MFPO, NaPO, SymMPO) in plain PyTorch."""
from mmpo.cpu_bf16 import guard as _bf16_guard

__version__ = "0.1.0"
_bf16_guard()  # before any bfloat16 kernel runs: see mmpo/cpu_bf16.py
