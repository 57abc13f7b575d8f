// Package v1alpha1 is the jvol.io/v1alpha1 API: the Journal, one per volume,
// cluster-scoped. The controller creates it from CreateVolume; the node named
// in its spec makes the backing images and reports the engine's figures in
// its status.
//
// +kubebuilder:object:generate=true
// +groupName=jvol.io
package v1alpha1
