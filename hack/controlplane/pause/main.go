// Command pf-pause is the pods' sandbox process on the local cluster's node (what
// Kubernetes' pause image runs): it holds the pod's namespaces, reaps the zombies
// of a shared process namespace, and exits on SIGINT or SIGTERM. Built static, it
// is the whole of the node's sandbox image.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
