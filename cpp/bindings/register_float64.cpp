// Instantiation of the bindings for float64.
#include "register_impl.hpp"
METASTEP_REGISTER(double, float64)
