"""Video data: list files, frame-accurate decoding, clip sampling, uint8 transforms, datasets, synthetic data.

Import from the submodules (``motionmae_ds.data.datasets`` ...): importing the package stays cheap and does
not pull in the video decoders.
"""
