package main

// Restarting one component on request (`pf-controlplane restart --dir DIR NAME`), so
// that tests can show clients riding out an API server (or etcd, or kubelet) outage.
//
// The request is a file: the command writes DIR/restart/ID.request, the supervisor
// (which looks for requests every 100ms while it serves) stops the component
// (SIGTERM, SIGKILL after stopGrace), starts it again with the same arguments,
// waits until it is ready and answers in DIR/restart/ID.result. A file needs no
// signal (a pid read from a stale file cannot hit another process) and no unix
// socket (limited to 108 bytes of path). DIR/components.json says each component's
// pid, restart count and last restart. A component that exits on its own still
// ends the supervisor: only the one being restarted is expected to stop.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

const etcdName = "etcd"

// restartRequest is DIR/restart/ID.request.
type restartRequest struct {
	Component string  `json:"component"`
	TimeoutS  float64 `json:"timeout_s"`
}

// restartResult is DIR/restart/ID.result, and the output of `pf-controlplane restart`.
type restartResult struct {
	Component string `json:"component"`
	OK        bool   `json:"ok"`
	Error     string `json:"error,omitempty"`
	PidBefore int    `json:"pid_before,omitempty"`
	Pid       int    `json:"pid,omitempty"`
	Restarts  int    `json:"restarts"`
	// StoppedS is how long the old process took to stop; ReadyS from the request
	// to the new process ready.
	StoppedS float64 `json:"stopped_s"`
	ReadyS   float64 `json:"ready_s"`
}

// componentStatus is one entry of DIR/components.json.
type componentStatus struct {
	Pid         int     `json:"pid"`
	Started     string  `json:"started"`
	Restarts    int     `json:"restarts"`
	LastRestart string  `json:"last_restart,omitempty"`
	LastReadyS  float64 `json:"last_restart_ready_s,omitempty"`
}

func restartDir(dir string) string { return filepath.Join(dir, "restart") }

// supervisor serves a ready cluster: it watches the components and obeys restart requests.
type supervisor struct {
	dir    string
	admin  *http.Client
	server string
	sigs   chan os.Signal
	// watched are the component processes now (the control plane's, then the node's).
	watched func() []*child
	// etcd is embedded (no process of its own): restarting it closes and restarts it.
	restartEtcd func() error
	node        *node
	started     time.Time
	// restarts are the restarts on request so far, by component.
	restarts map[string]restartRecord
}

// restartRecord counts a component's restarts on request and describes the last.
type restartRecord struct {
	count  int
	at     time.Time
	readyS float64
}

// serve runs until a signal (nil) or a component's death (its error).
func (s *supervisor) serve() error {
	s.started, s.restarts = time.Now(), map[string]restartRecord{}
	if err := s.writeStatus(); err != nil {
		return err
	}
	for {
		var pending []string
		err := waitFor(context.Background(), s.watched(), s.sigs, func() bool {
			pending = pendingRequests(s.dir)
			return len(pending) > 0
		})
		if errors.Is(err, errStopped) {
			return nil
		}
		if err != nil {
			return err
		}
		for _, id := range pending {
			if err := s.handle(id); err != nil {
				if errors.Is(err, errStopped) {
					return nil
				}
				return err
			}
		}
	}
}

// pendingRequests are the ids of the request files in DIR/restart, oldest first.
func pendingRequests(dir string) []string {
	entries, err := os.ReadDir(restartDir(dir))
	if err != nil {
		return nil
	}
	var ids []string
	for _, e := range entries {
		if id, ok := strings.CutSuffix(e.Name(), ".request"); ok {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids) // ids start with the request's time
	return ids
}

// handle obeys one request and answers it; an error ends the supervisor (a
// signal, or a restarted component that could not be started or died).
func (s *supervisor) handle(id string) error {
	reqPath := filepath.Join(restartDir(s.dir), id+".request")
	b, err := os.ReadFile(reqPath)
	_ = os.Remove(reqPath)
	var req restartRequest
	if err == nil {
		err = json.Unmarshal(b, &req)
	}
	res := restartResult{Component: req.Component}
	var fatal error
	switch {
	case err != nil:
		res.Error = fmt.Sprintf("unreadable request: %v", err)
	default:
		timeout := time.Duration(req.TimeoutS * float64(time.Second))
		if timeout <= 0 {
			timeout = time.Minute
		}
		fatal = s.restart(req.Component, timeout, &res)
	}
	if res.Error == "" && fatal != nil {
		res.Error = fatal.Error()
	}
	res.OK = res.Error == ""
	if res.OK {
		fmt.Printf("restart %s: pid %d ready in %.1fs (restart %d; pid %d stopped in %.1fs)\n",
			res.Component, res.Pid, res.ReadyS, res.Restarts, res.PidBefore, res.StoppedS)
	} else {
		fmt.Printf("restart %s failed: %s\n", res.Component, res.Error)
	}
	if err := s.writeStatus(); err != nil && fatal == nil {
		fatal = err
	}
	out, _ := json.Marshal(res)
	if err := writeAtomic(filepath.Join(restartDir(s.dir), id+".result"), out); err != nil && fatal == nil {
		fatal = err
	}
	return fatal
}

// restart stops the named component, starts it again and waits until it is ready
// or timeout. It fills res; the error it returns ends the supervisor.
func (s *supervisor) restart(name string, timeout time.Duration, res *restartResult) error {
	requested := time.Now()
	if name == etcdName {
		fmt.Printf("restart %s: closing the embedded etcd\n", name)
		res.PidBefore, res.Pid = os.Getpid(), os.Getpid()
		if err := s.restartEtcd(); err != nil {
			return fmt.Errorf("etcd did not start again: %w", err)
		}
		res.StoppedS = time.Since(requested).Seconds()
		// etcd is back when the API server reads it again.
		return s.awaitReady(name, timeout, requested, res, s.readiness("kube-apiserver", requested))
	}
	var c *child
	var names []string
	for _, w := range s.watched() {
		names = append(names, w.name)
		if w.name == name {
			c = w
		}
	}
	if c == nil {
		names = append(names, etcdName)
		sort.Strings(names)
		res.Error = fmt.Sprintf("unknown component %q: this cluster can restart %s", name, strings.Join(names, ", "))
		return nil
	}
	res.PidBefore = c.cmd.Process.Pid
	fmt.Printf("restart %s: stopping pid %d\n", name, res.PidBefore)
	c.stop()
	res.StoppedS = time.Since(requested).Seconds()
	if err := c.start(os.O_APPEND); err != nil {
		return fmt.Errorf("%s could not be started again: %w", name, err)
	}
	res.Pid = c.cmd.Process.Pid
	return s.awaitReady(name, timeout, requested, res, s.readiness(name, c.started))
}

// awaitReady counts the restart and waits until ready holds; a timeout is reported
// in res (the supervisor keeps serving), a signal or a component's death is returned.
func (s *supervisor) awaitReady(name string, timeout time.Duration, requested time.Time, res *restartResult, ready func() bool) error {
	r := s.restarts[name]
	r.count, r.at, r.readyS = r.count+1, requested, 0
	s.restarts[name] = r
	res.Restarts = r.count
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := waitFor(ctx, s.watched(), s.sigs, ready)
	res.ReadyS = time.Since(requested).Seconds()
	switch {
	case err == nil:
		r.readyS = res.ReadyS
		s.restarts[name] = r
		return nil
	case errors.Is(err, context.DeadlineExceeded):
		res.Error = fmt.Sprintf("%s not ready %s after its restart (see %s)", name, timeout, filepath.Join(s.dir, "logs", name+".log"))
		return nil
	default:
		return err
	}
}

// readiness is the check that says the named component, started at since, serves again.
func (s *supervisor) readiness(name string, since time.Time) func() bool {
	switch name {
	case "kube-apiserver":
		return func() bool { return get(s.admin, s.server+"/readyz") == http.StatusOK }
	case "kubelet":
		// The Node stays Ready through a short outage: the new kubelet's Lease says it
		// is back, and it serves (through the API server, as logs and exec go) every pod
		// bound to the node.
		return func() bool {
			return leaseRenewedSince(s.admin, s.server, since) && nodeReady(s.admin, s.server) &&
				kubeletHasPods(s.admin, s.server)
		}
	case "kube-proxy":
		return s.node.st.kubeProxyReady
	case "coredns":
		return s.node.st.corednsReady
	case "containerd":
		return func() bool { return criReady(s.node.st.socket()) }
	default:
		// The controller-manager and the scheduler serve no health endpoint here
		// (--secure-port=0): started and still running after a moment.
		return func() bool { return time.Since(since) > time.Second }
	}
}

// leaseRenewedSince says whether the node's Lease was renewed after t.
func leaseRenewedSince(admin *http.Client, server string, t time.Time) bool {
	resp, err := admin.Get(server + "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/" + nodeName)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var l struct {
		Spec struct {
			RenewTime time.Time `json:"renewTime"`
		} `json:"spec"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&l) != nil {
		return false
	}
	// renewTime has microseconds; t's sub-microsecond part must not hide a renewal.
	return !l.Spec.RenewTime.Before(t.Truncate(time.Microsecond))
}

// kubeletHasPods says whether the kubelet's own list of pods (its /pods, through the
// API server's node proxy) holds every pod the API server has bound to the node.
func kubeletHasPods(admin *http.Client, server string) bool {
	uids := func(path string) (map[string]bool, bool) {
		resp, err := admin.Get(server + path)
		if err != nil {
			return nil, false
		}
		defer resp.Body.Close()
		var list struct {
			Items []struct {
				Metadata struct {
					UID string `json:"uid"`
				} `json:"metadata"`
			} `json:"items"`
		}
		if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&list) != nil {
			return nil, false
		}
		set := map[string]bool{}
		for _, p := range list.Items {
			set[p.Metadata.UID] = true
		}
		return set, true
	}
	bound, ok := uids("/api/v1/pods?fieldSelector=spec.nodeName%3D" + nodeName)
	if !ok {
		return false
	}
	served, ok := uids("/api/v1/nodes/" + nodeName + "/proxy/pods")
	if !ok {
		return false
	}
	for uid := range bound {
		if !served[uid] {
			return false
		}
	}
	return true
}

// writeStatus writes DIR/components.json.
func (s *supervisor) writeStatus() error {
	status := func(name string, pid int, started time.Time) componentStatus {
		st := componentStatus{Pid: pid, Started: started.Format(time.RFC3339Nano)}
		if r, ok := s.restarts[name]; ok {
			st.Restarts, st.LastRestart, st.LastReadyS = r.count, r.at.Format(time.RFC3339Nano), r.readyS
		}
		return st
	}
	// etcd runs inside the supervisor: its pid, and its start is the supervisor's serving.
	etcdStarted := s.started
	if r, ok := s.restarts[etcdName]; ok {
		etcdStarted = r.at
	}
	all := map[string]componentStatus{etcdName: status(etcdName, os.Getpid(), etcdStarted)}
	for _, c := range s.watched() {
		all[c.name] = status(c.name, c.cmd.Process.Pid, c.started)
	}
	b, err := json.MarshalIndent(map[string]any{"supervisor_pid": os.Getpid(), "components": all}, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(s.dir, "components.json"), b)
}

// writeAtomic writes b to path through a temporary file, so a reader never sees half of it.
func writeAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// runRestart is `pf-controlplane restart --dir DIR [--timeout D] COMPONENT`: asks the
// supervisor of DIR to restart one component and prints its answer (JSON) once the
// component is ready again.
func runRestart(args []string) int {
	fs := flag.NewFlagSet("restart", flag.ContinueOnError)
	dir := fs.String("dir", "", "the cluster's state folder (required)")
	timeout := fs.Duration("timeout", time.Minute, "how long the restarted component may take to be ready")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dir == "" || fs.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: pf-controlplane restart --dir DIR [--timeout D] kube-apiserver|kube-controller-manager|kube-scheduler|etcd|kubelet|kube-proxy|coredns|containerd")
		return 2
	}
	res, err := requestRestart(*dir, fs.Arg(0), *timeout)
	if err != nil {
		fmt.Fprintf(os.Stderr, "restart %s: %v\n", fs.Arg(0), err)
		return 1
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
	if !res.OK {
		fmt.Fprintf(os.Stderr, "restart %s: %s\n", res.Component, res.Error)
		return 1
	}
	return 0
}

// requestRestart writes the request and waits for the supervisor's answer.
func requestRestart(dir, name string, timeout time.Duration) (*restartResult, error) {
	var ready struct {
		Pid int `json:"pid"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "ready.json"))
	if err == nil {
		err = json.Unmarshal(b, &ready)
	}
	if err != nil {
		return nil, fmt.Errorf("no ready cluster in %s: %w", dir, err)
	}
	alive := func() bool { return syscall.Kill(ready.Pid, 0) == nil }
	if !alive() {
		return nil, fmt.Errorf("the supervisor of %s (pid %d) is not running", dir, ready.Pid)
	}
	if err := os.MkdirAll(restartDir(dir), 0o700); err != nil {
		return nil, err
	}
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	id := fmt.Sprintf("%d-%s", time.Now().UnixNano(), hex.EncodeToString(suffix))
	req, _ := json.Marshal(restartRequest{Component: name, TimeoutS: timeout.Seconds()})
	reqPath := filepath.Join(restartDir(dir), id+".request")
	resPath := filepath.Join(restartDir(dir), id+".result")
	if err := writeAtomic(reqPath, req); err != nil {
		return nil, err
	}
	// The supervisor takes a request within 100ms while it serves, or once an
	// earlier restart is done: stopping takes up to stopGrace, then the wait for ready.
	asked := time.Now()
	bound := stopGrace + timeout + 10*time.Second
	for {
		if b, err := os.ReadFile(resPath); err == nil {
			_ = os.Remove(resPath)
			res := &restartResult{}
			return res, json.Unmarshal(b, res)
		}
		now := time.Now()
		if !alive() {
			_ = os.Remove(reqPath)
			return nil, fmt.Errorf("the supervisor (pid %d) exited (see %s)", ready.Pid, filepath.Join(dir, "supervisor.log"))
		}
		if _, err := os.Stat(reqPath); err == nil && now.Sub(asked) > bound {
			_ = os.Remove(reqPath)
			return nil, fmt.Errorf("the supervisor (pid %d) did not take the request in %s", ready.Pid, bound)
		}
		if now.Sub(asked) > 2*bound {
			return nil, fmt.Errorf("no answer from the supervisor (pid %d) after %s", ready.Pid, 2*bound)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
