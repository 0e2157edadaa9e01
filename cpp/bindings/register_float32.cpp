// Instantiation of the bindings for float32.
#include "register_impl.hpp"
METASTEP_REGISTER(float, float32)
