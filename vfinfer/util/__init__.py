"""The bottom layer: files and pixels, with no knowledge of models.

``images`` (decoding any lab's files to 8-bit gray, listing a case, PNG encoding), ``atomic``
(writes that readers never see half done), ``geometry`` (background convention, principal
axis, rotate-and-crop of one cut-out), ``machine`` (CPU and GPU facts), ``stats``
(percentile summaries). Every other subpackage may import from here; nothing here imports
from them.
"""
