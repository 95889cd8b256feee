// pybind11 binding of the grid-DBSCAN kernels (grid_dbscan.hpp).  Arrays are taken
// without conversion (noconvert): the Python wrapper (gp_engine/segment.py) checks dtype
// and contiguity, so a np.memmap is worked on in place and nothing is copied silently.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "grid_dbscan.hpp"

namespace py = pybind11;

namespace {

constexpr int C = py::array::c_style;

gpe::Shape3 shape3(const py::buffer_info& b) {
    if (b.ndim != 3) throw std::invalid_argument("expected a 3D array");
    return {b.shape[0], b.shape[1], b.shape[2]};
}

template <class T>
py::tuple dbscan(py::array_t<T, C> field, double eps, int min_samples, double scale) {
    auto bi = field.request();
    const gpe::Shape3 s = shape3(bi);
    const T* v = static_cast<const T*>(bi.ptr);
    py::array_t<int32_t> labels({s.nz, s.ny, s.nx});
    py::array_t<uint8_t> core({s.nz, s.ny, s.nx});
    int32_t* L = labels.mutable_data();
    uint8_t* K = core.mutable_data();
    int32_t n = 0;
    {
        py::gil_scoped_release nogil;
        if (!gpe::all_finite(v, s.size())) throw std::domain_error("field contains NaN or inf");
        n = gpe::grid_dbscan(v, s, eps, min_samples, scale, L, K);
    }
    return py::make_tuple(labels, core, n);
}

int64_t fill(py::array_t<int32_t, C> labels, int64_t max_iter, bool all_zero_to_one) {
    auto bi = labels.request(true);
    if (bi.readonly) throw std::invalid_argument("labels must be writable");
    const gpe::Shape3 s = shape3(bi);
    py::gil_scoped_release nogil;
    return gpe::fill_noise(static_cast<int32_t*>(bi.ptr), s, max_iter, all_zero_to_one);
}

void union_pairs(py::array_t<int64_t, C> parent, py::array_t<int64_t, C> a,
                 py::array_t<int64_t, C> b) {
    if (a.size() != b.size()) throw std::invalid_argument("a and b differ in length");
    int64_t* P = parent.mutable_data();
    const int64_t n = parent.size(), m = a.size();
    const int64_t* A = a.data();
    const int64_t* B = b.data();
    py::gil_scoped_release nogil;
    gpe::uf_union_pairs(P, n, A, B, m);
}

void flatten(py::array_t<int64_t, C> parent) {
    int64_t* P = parent.mutable_data();
    const int64_t n = parent.size();
    py::gil_scoped_release nogil;
    gpe::uf_flatten(P, n);
}

py::tuple first_and_count(py::array_t<int32_t, C> labels, py::array_t<uint8_t, C> mask,
                          int64_t nlab) {
    if (labels.size() != mask.size()) throw std::invalid_argument("labels and mask differ");
    py::array_t<int64_t> first(nlab + 1), count(nlab + 1);
    const int32_t* L = labels.data();
    const uint8_t* M = mask.data();
    int64_t* F = first.mutable_data();
    int64_t* N = count.mutable_data();
    const int64_t n = labels.size();
    {
        py::gil_scoped_release nogil;
        gpe::label_first_and_count(L, M, n, nlab, F, N);
    }
    return py::make_tuple(first, count);
}

}  // namespace

PYBIND11_MODULE(_segment, m) {
    m.doc() = "gp-engine segmentation kernels: exact grid DBSCAN, noise fill, union-find";
    m.def("dbscan_f32", &dbscan<float>, py::arg("field").noconvert(), py::arg("eps"),
          py::arg("min_samples"), py::arg("scale"),
          "Exact grid DBSCAN (eps < 2) -> (labels int32 0=noise, core uint8, n_clusters).");
    m.def("dbscan_f64", &dbscan<double>, py::arg("field").noconvert(), py::arg("eps"),
          py::arg("min_samples"), py::arg("scale"));
    m.def("fill_noise", &fill, py::arg("labels").noconvert(), py::arg("max_iter"),
          py::arg("all_zero_to_one"),
          "In-place synchronous majority fill of zeros; returns the count still zero.");
    m.def("union_pairs", &union_pairs, py::arg("parent").noconvert(), py::arg("a").noconvert(),
          py::arg("b").noconvert(), "Union a[i] with b[i] in the int64 parent array (in place).");
    m.def("flatten", &flatten, py::arg("parent").noconvert(),
          "Replace every parent by its root (in place).");
    m.def("first_and_count", &first_and_count, py::arg("labels").noconvert(),
          py::arg("mask").noconvert(), py::arg("nlab"),
          "Per label 1..nlab: first flat index with mask set (-1 if none) and voxel count.");
}
