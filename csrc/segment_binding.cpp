// Placeholder binding (replaced by the grid-DBSCAN kernel binding).
#include <pybind11/pybind11.h>
PYBIND11_MODULE(_segment, m) { m.doc() = "gp-engine segmentation kernels"; }
