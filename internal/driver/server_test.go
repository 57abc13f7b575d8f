package driver

import (
	"maps"
	"slices"
	"testing"
)

// A role serves only its own services: a controller has no Node service and
// a node no Controller service, even though Run holds both as nil pointers.
func TestServerRegistersOnlyTheServicesARoleHas(t *testing.T) {
	var cs *Controller
	var ns *Node
	for _, c := range []struct {
		name string
		cs   *Controller
		ns   *Node
		want []string
	}{
		{"controller", &Controller{}, ns, []string{"csi.v1.Controller", "csi.v1.Identity"}},
		{"node", cs, &Node{}, []string{"csi.v1.Identity", "csi.v1.Node"}},
		{"standalone", &Controller{}, &Node{}, []string{"csi.v1.Controller", "csi.v1.Identity", "csi.v1.Node"}},
	} {
		s := NewServer(&Identity{}, c.cs, c.ns)
		if got := slices.Sorted(maps.Keys(s.GetServiceInfo())); !slices.Equal(got, c.want) {
			t.Errorf("%s serves %v, want %v", c.name, got, c.want)
		}
	}
}
