"""mmpo: multimodal preference optimization (DPO, mDPO, MFPO, NaPO, SymMPO) in plain PyTorch."""
__version__ = "0.1.0"
