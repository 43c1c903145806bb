package main

import (
	"io"
	"net"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// listenInNetns opens a TCP listener inside the network namespace at nsPath. A
// socket keeps the namespace it was created in, so one thread enters the
// namespace, listens and leaves; the listener then serves from any thread.
func listenInNetns(nsPath, addr string) (net.Listener, error) {
	type result struct {
		l   net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		l, back, err := listenOnThread(nsPath, addr)
		if back {
			runtime.UnlockOSThread()
		} // else: the thread is left in the namespace and ends with this goroutine
		ch <- result{l, err}
	}()
	r := <-ch
	return r.l, r.err
}

// listenOnThread does the work of listenInNetns on a locked thread; back says
// whether the thread is in its own namespace again.
func listenOnThread(nsPath, addr string) (net.Listener, bool, error) {
	self, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, true, err
	}
	defer unix.Close(self)
	target, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, true, err
	}
	defer unix.Close(target)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		return nil, true, err
	}
	l, lerr := net.Listen("tcp", addr)
	if err := unix.Setns(self, unix.CLONE_NEWNET); err != nil {
		if l != nil {
			l.Close()
		}
		return nil, false, err
	}
	return l, true, lerr
}

// relay copies each connection accepted on l to and from target until l is closed.
func relay(l net.Listener, target string) {
	for {
		in, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer in.Close()
			out, err := net.Dial("tcp", target)
			if err != nil {
				return
			}
			defer out.Close()
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(out, in)
				if c, ok := out.(*net.TCPConn); ok {
					_ = c.CloseWrite()
				}
			}()
			_, _ = io.Copy(in, out)
			if c, ok := in.(*net.TCPConn); ok {
				_ = c.CloseWrite()
			}
			wg.Wait()
		}()
	}
}
