"""vfinfer_export: the PyTorch side of vfinfer (models, checkpoints, ONNX export, training).

Installed with ``pip install -e ".[export]"``; the runtime package ``vfinfer`` never imports it
except behind the commands that need torch.
"""
