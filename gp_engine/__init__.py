"""gp-engine: GrainPaint, a diffusion model that generates 3D grain microstructures of any size.

The data flow, one module per step:

- ``volume_io``   read/write volumes (SPPARKS dump, .npy, .npz, .vti)
- ``encoding``    grains -> float fields in [-1, 1] (paper per-block normalisation, grain-separable levels)
- ``segment``     float field -> grain ids (exact grid DBSCAN in C++, or level snapping + components)
- ``stats``       grain statistics and KL divergence against a reference set
- ``unet`` / ``diffusion`` / ``blocks`` / ``train``   the model and its trainer (needs torch)
- ``export``      trainer checkpoint -> ONNX (+ TensorRT) with a manifest
- ``plan_config`` / ``planner`` / ``repaint`` / ``runtime`` / ``canvas`` / ``generate``   the main job
"""

__version__ = "0.1.0"
