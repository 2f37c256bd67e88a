// Python bindings of BlockAllocator as surge._C.BlockAllocator.
// pybind11's built-in translation turns std::invalid_argument into ValueError,
// std::out_of_range into IndexError and std::runtime_error into RuntimeError.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "block_allocator/block_allocator.h"

namespace py = pybind11;

namespace surge {

void bind_block_allocator(py::module_& m) {
  py::class_<BlockAllocator>(m, "BlockAllocator",
                             "Pool of KV pages: free queue, ref counts and prefix-hash table. Page 0 is the null page.")
      .def(py::init<int64_t, int64_t, int64_t>(), py::arg("num_pages"), py::arg("page_size"),
           py::arg("max_cached_pages") = -1,
           "max_cached_pages bounds the free pages that keep a cached prefix (< 0: no bound); the oldest go first.")
      .def("allocate", &BlockAllocator::allocate, py::arg("n"),
           "Pop n pages from the front of the free queue (ref count 1 each); evicts their cached hashes.")
      .def("free", &BlockAllocator::free, py::arg("pages"),
           "Drop one reference per page, in order; pages reaching 0 join the back of the free queue.")
      .def("touch", &BlockAllocator::touch, py::arg("pages"),
           "Take one more reference per page; cached free pages leave the free queue.")
      .def_static("hash_page", &BlockAllocator::hash_page, py::arg("parent_hash"), py::arg("token_ids"),
                  py::arg("extra_key") = 0, "64-bit chained hash of one full page.")
      .def("register", &BlockAllocator::register_page, py::arg("page"), py::arg("hash"), py::arg("token_ids"),
           "Record an in-use full page under its hash; False if another page already holds the hash.")
      .def("find_prefix", &BlockAllocator::find_prefix, py::arg("token_ids"),
           py::arg("extra_key") = 0, py::arg("max_pages") = py::none(),
           "Pages holding the longest cached prefix of full pages of token_ids; takes no references.")
      .def("reset_prefix_cache", &BlockAllocator::reset_prefix_cache,
           "Drop every hash registration; refused (False) while any page is in use.")
      .def("check_integrity", &BlockAllocator::check_integrity,
           "Raise RuntimeError naming the first broken invariant.")
      .def("stats",
           [](const BlockAllocator& self) {
             BlockAllocatorStats s = self.stats();
             py::dict d;
             d["num_total_pages"] = s.num_total_pages;
             d["num_free_pages"] = s.num_free_pages;
             d["num_cached_pages"] = s.num_cached_pages;
             d["num_used_pages"] = s.num_used_pages;
             d["num_queried_pages"] = s.num_queried_pages;
             d["num_hit_pages"] = s.num_hit_pages;
             d["num_evictions"] = s.num_evictions;
             d["max_cached_pages"] = s.max_cached_pages;
             d["num_capacity_evictions"] = s.num_capacity_evictions;
             return d;
           })
      .def("ref_count", &BlockAllocator::ref_count, py::arg("page"))
      .def("page_hash", &BlockAllocator::page_hash, py::arg("page"), "The page's registered hash, or None.")
      .def("ref_counts", &BlockAllocator::ref_counts, "Ref count of every page, indexed by page id.")
      .def("free_queue", &BlockAllocator::free_queue, "Free page ids, front (next to be allocated) first.")
      .def_property_readonly("num_free_pages", &BlockAllocator::num_free_pages)
      .def_property_readonly("num_pages", &BlockAllocator::num_pages)
      .def_property_readonly("max_cached_pages", &BlockAllocator::max_cached_pages)
      .def_property_readonly("page_size", &BlockAllocator::page_size);
}

}  // namespace surge
