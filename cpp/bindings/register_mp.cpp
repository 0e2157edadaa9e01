// Instantiation of the bindings for mp (256-bit Boost cpp_bin_float).
#include "register_impl.hpp"
METASTEP_REGISTER(metastep::mp_t, mp)
