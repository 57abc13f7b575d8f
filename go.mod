module github.com/jvol-io/jvol

go 1.26.0

require golang.org/x/sys v0.49.0

require github.com/hanwen/go-fuse/v2 v2.12.1 // indirect
