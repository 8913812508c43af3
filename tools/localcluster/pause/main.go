// Command pause is the sandbox ("infra") container of the local node's pods.
//
// It holds the pod's namespaces open and does nothing else: it sleeps until SIGTERM or
// SIGINT, and as PID 1 of a pod that shares its process namespace it reaps the children
// that other containers leave orphaned. Built static (CGO_ENABLED=0) by hack/build-node.sh
// and packed into an image by tools/localcluster/images.py.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Println("tokensync pause")
		return
	}
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			return
		}
		reap()
	}
}

// reap collects every child that has exited, without blocking.
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
