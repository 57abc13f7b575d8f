package attach

import "unsafe"

func uintptrOf(p *[2]uint64) uintptr { return uintptr(unsafe.Pointer(p)) }
