// Command pause is the sandbox process of the local cluster's pods
// (hack/cluster.sh): it waits for a signal to end and reaps the children
// that the pod's other processes leave to it. The cluster has no registry to
// pull registry.k8s.io/pause from, so hack/images.sh builds it from here.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			return
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
