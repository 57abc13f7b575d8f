module github.com/jvol-io/jvol

go 1.26.0

require (
	github.com/hanwen/go-fuse/v2 v2.12.1
	golang.org/x/sys v0.49.0
	k8s.io/klog/v2 v2.130.1
	k8s.io/mount-utils v0.34.4
	k8s.io/utils v0.0.0-20260707023825-cf1189d6abe3
)

require (
	github.com/go-logr/logr v1.4.2 // indirect
	github.com/moby/sys/mountinfo v0.7.2 // indirect
)
