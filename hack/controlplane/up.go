package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

const kubernetesVersion = "v1.34.4"

// auditWritesPolicy records one line per write (at ResponseComplete), nothing for reads.
const auditWritesPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
`

func base64Std(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

type upOptions struct {
	dir                      string
	kubeconfig               string
	removeDir                bool
	nodeMonitorGracePeriod   time.Duration
	nodeMonitorPeriod        time.Duration
	nodeStartupGracePeriod   time.Duration
	notReadyTolerationSecs   int
	unreachableTolerationSec int
	verbosity                int
	readyTimeout             time.Duration
	kubeAPIQPS               float64
	kubeAPIBurst             int
	auditWrites              bool
	node                     bool
	corednsBinary            string
	pauseBinary              string
}

// child is one component process. A restart on request replaces its process in
// place (same name, argv and log), so every list that holds the child watches the new one.
type child struct {
	name string
	argv []string
	logs string
	cmd  *exec.Cmd
	// exited is closed once the process has been reaped; err is its Wait result.
	exited chan struct{}
	err    error
	// started is when the current process started.
	started time.Time
}

// stopGrace is how long a child may take to stop on SIGTERM before it is killed.
const stopGrace = 10 * time.Second

// stop sends SIGTERM and waits; a child that ignores it for stopGrace is killed.
// It does nothing to a child that has already exited.
func (c *child) stop() {
	select {
	case <-c.exited:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(stopGrace):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
}

// start starts the child's process, its output going to logs/NAME.log (flag:
// os.O_TRUNC for a first start, os.O_APPEND for a restart, after a marker line).
func (c *child) start(flag int) error {
	f, err := os.OpenFile(filepath.Join(c.logs, c.name+".log"), os.O_CREATE|os.O_WRONLY|flag, 0o644)
	if err != nil {
		return err
	}
	if flag == os.O_APPEND {
		fmt.Fprintf(f, "--- pf-controlplane: restarted on request at %s ---\n", time.Now().Format(time.RFC3339Nano))
	}
	cmd := exec.Command(c.argv[0], c.argv[1:]...)
	cmd.Stdout = f
	cmd.Stderr = f
	// If the supervisor dies without cleaning up, the kernel kills the child.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", c.name, err)
	}
	// The goroutine owns its own channel: a later restart gives the child a new one.
	exited := make(chan struct{})
	c.cmd, c.exited, c.err, c.started = cmd, exited, nil, time.Now()
	go func() {
		err := cmd.Wait()
		f.Close()
		c.err = err
		close(exited)
	}()
	return nil
}

func runUp(args []string) int {
	o := upOptions{}
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	fs.StringVar(&o.dir, "dir", "", "state folder: certificates, etcd data, logs (required)")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "where to write the admin kubeconfig once ready (default DIR/admin.kubeconfig)")
	fs.BoolVar(&o.removeDir, "remove-dir-on-exit", false, "delete DIR when stopping")
	fs.DurationVar(&o.nodeMonitorGracePeriod, "node-monitor-grace-period", 50*time.Second, "how long a Node's Lease may go unrenewed before it turns NotReady")
	fs.DurationVar(&o.nodeMonitorPeriod, "node-monitor-period", 5*time.Second, "how often the node-lifecycle controller checks Nodes")
	fs.DurationVar(&o.nodeStartupGracePeriod, "node-startup-grace-period", time.Minute, "grace for a new Node before it is marked unhealthy")
	fs.IntVar(&o.notReadyTolerationSecs, "default-not-ready-toleration-seconds", 300, "toleration added to pods for node.kubernetes.io/not-ready")
	fs.IntVar(&o.unreachableTolerationSec, "default-unreachable-toleration-seconds", 300, "toleration added to pods for node.kubernetes.io/unreachable")
	fs.IntVar(&o.verbosity, "v", 1, "log verbosity of the components")
	fs.DurationVar(&o.readyTimeout, "ready-timeout", 3*time.Minute, "give up when the cluster is not ready by then")
	// Kubernetes' defaults (20/30) pace the Job controller at about 10 pods/s; big
	// InferenceJobs on one machine want more, as large clusters configure too.
	fs.Float64Var(&o.kubeAPIQPS, "kube-api-qps", 20, "API requests per second of the controller-manager and the scheduler")
	fs.IntVar(&o.kubeAPIBurst, "kube-api-burst", 30, "API request burst of the controller-manager and the scheduler")
	// Benchmarks attribute the API server's writes to their writers (user, user agent).
	fs.BoolVar(&o.auditWrites, "audit-writes", false, "log every write request's metadata to DIR/logs/audit.log (JSON lines)")
	fs.BoolVar(&o.node, "node", false, "also start one real node (containerd, kubelet, kube-proxy, CoreDNS) in a network namespace of its own; needs root and hack/node-packages.sh")
	fs.StringVar(&o.corednsBinary, "coredns-binary", "", "CoreDNS for --node (default: pf-coredns beside this binary)")
	fs.StringVar(&o.pauseBinary, "pause-binary", "", "the pods' sandbox program for --node (default: pf-pause beside this binary)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if self, err := os.Executable(); err == nil {
		if o.corednsBinary == "" {
			o.corednsBinary = filepath.Join(filepath.Dir(self), "pf-coredns")
		}
		if o.pauseBinary == "" {
			o.pauseBinary = filepath.Join(filepath.Dir(self), "pf-pause")
		}
	}
	if o.dir == "" {
		fmt.Fprintln(os.Stderr, "up: --dir is required")
		return 2
	}
	if o.kubeconfig == "" {
		o.kubeconfig = filepath.Join(o.dir, "admin.kubeconfig")
	}
	err := up(o)
	if o.removeDir {
		_ = os.RemoveAll(o.dir)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "pf-controlplane: %v\n", err)
		return 1
	}
	return 0
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func up(o upOptions) error {
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return err
	}
	pki := filepath.Join(dir, "pki")
	logs := filepath.Join(dir, "logs")
	for _, d := range []string{pki, logs} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	// A stale data folder from a crashed run would hold keys that no longer
	// match; every start is a fresh cluster.
	_ = os.RemoveAll(filepath.Join(dir, "etcd"))
	_ = os.Remove(o.kubeconfig)
	_ = os.Remove(filepath.Join(dir, "ready.json"))
	_ = os.Remove(filepath.Join(dir, "components.json"))
	_ = os.RemoveAll(restartDir(dir))

	started := time.Now()

	// One teardown, in order: the node (its pods need containerd, not the API),
	// then the control plane's components, then etcd.
	var children []*child
	var nd *node
	var etcd *embed.Etcd
	defer func() {
		if err := nd.stop(); err != nil {
			fmt.Fprintf(os.Stderr, "pf-controlplane: node cleanup: %v\n", err)
		}
		stopAll(children)
		if etcd != nil {
			etcd.Close()
		}
	}()
	advertise := "127.0.0.1"
	var extraHosts []string
	if o.node {
		if err := checkNodePrerequisites(o); err != nil {
			return err
		}
		// A node whose supervisor was killed left its state behind: remove it first.
		if st, err := loadNodeState(dir); err == nil {
			if err := cleanNode(dir, st); err != nil {
				return fmt.Errorf("the previous node's leftovers: %w", err)
			}
		}
		st, err := allocateNodeNetwork(dir)
		if st != nil {
			nd = &node{st: st, dir: dir, logs: logs}
		}
		if err != nil {
			return fmt.Errorf("node network: %w", err)
		}
		// Pods reach the API server through the `kubernetes` Service, whose
		// endpoint is this address: the relay in the node's namespace.
		advertise = st.NodeIP
		extraHosts = []string{st.NodeIP}
	}
	ca, err := writePKI(pki, extraHosts)
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	etcdPort, err := freePort()
	if err != nil {
		return err
	}
	peerPort, err := freePort()
	if err != nil {
		return err
	}
	apiPort, err := freePort()
	if err != nil {
		return err
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", apiPort)

	etcd, err = startEtcd(filepath.Join(dir, "etcd"), etcdPort, peerPort)
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}

	for _, k := range []struct{ file, client, user string }{
		{"controller-manager.kubeconfig", "controller-manager", "system:kube-controller-manager"},
		{"scheduler.kubeconfig", "scheduler", "system:kube-scheduler"},
		{"admin-internal.kubeconfig", "admin", "kubernetes-admin"},
	} {
		if err := writeKubeconfig(filepath.Join(dir, k.file), server, pki, "ca", k.client, k.user); err != nil {
			return err
		}
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)

	self, err := os.Executable()
	if err != nil {
		return err
	}
	v := strconv.Itoa(o.verbosity)
	p := func(n string) string { return filepath.Join(pki, n) }

	apiArgs := []string{
		"--bind-address=127.0.0.1",
		"--advertise-address=" + advertise,
		"--secure-port=" + strconv.Itoa(apiPort),
		"--etcd-servers=" + fmt.Sprintf("http://127.0.0.1:%d", etcdPort),
		"--tls-cert-file=" + p("apiserver.crt"),
		"--tls-private-key-file=" + p("apiserver.key"),
		"--client-ca-file=" + p("ca.crt"),
		"--kubelet-client-certificate=" + p("apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + p("apiserver-kubelet-client.key"),
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--proxy-client-cert-file=" + p("front-proxy-client.crt"),
		"--proxy-client-key-file=" + p("front-proxy-client.key"),
		"--requestheader-client-ca-file=" + p("front-proxy-ca.crt"),
		"--requestheader-allowed-names=front-proxy-client",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-username-headers=X-Remote-User",
		"--service-account-key-file=" + p("sa.pub"),
		"--service-account-signing-key-file=" + p("sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range=" + serviceCIDR,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultTolerationSeconds,NodeRestriction,PodSecurity,Priority,ResourceQuota,MutatingAdmissionWebhook,ValidatingAdmissionPolicy,ValidatingAdmissionWebhook",
		"--allow-privileged=true",
		"--default-not-ready-toleration-seconds=" + strconv.Itoa(o.notReadyTolerationSecs),
		"--default-unreachable-toleration-seconds=" + strconv.Itoa(o.unreachableTolerationSec),
		"--profiling=false",
		// On SIGTERM, end open watches (their clients watch again) instead of
		// waiting out the 60s drain: a restart on request or a stop takes seconds.
		"--shutdown-watch-termination-grace-period=2s",
		"--v=" + v,
	}
	if o.auditWrites {
		policy := filepath.Join(dir, "audit-policy.yaml")
		if err := os.WriteFile(policy, []byte(auditWritesPolicy), 0o600); err != nil {
			return err
		}
		apiArgs = append(apiArgs,
			"--audit-policy-file="+policy,
			"--audit-log-path="+filepath.Join(logs, "audit.log"),
			"--audit-log-format=json",
			// Written as requests complete, so a reader sees a window's writes at its end.
			"--audit-log-mode=blocking",
			"--audit-log-maxsize=0",
		)
	}
	api, err := spawn(self, "kube-apiserver", apiArgs, logs)
	if err != nil {
		return err
	}
	children = append(children, api)

	client, err := adminClient(pki)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.readyTimeout)
	defer cancel()
	if err := waitFor(ctx, children, sigs, func() bool { return get(client, server+"/readyz") == http.StatusOK }); err != nil {
		return fmt.Errorf("kube-apiserver /readyz: %w (see %s)", err, filepath.Join(logs, "kube-apiserver.log"))
	}

	cm, err := spawn(self, "kube-controller-manager", []string{
		"--kubeconfig=" + filepath.Join(dir, "controller-manager.kubeconfig"),
		"--authentication-kubeconfig=" + filepath.Join(dir, "controller-manager.kubeconfig"),
		"--authorization-kubeconfig=" + filepath.Join(dir, "controller-manager.kubeconfig"),
		"--bind-address=127.0.0.1",
		"--secure-port=0",
		"--leader-elect=false",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + p("sa.key"),
		"--root-ca-file=" + p("ca.crt"),
		"--cluster-signing-cert-file=" + p("ca.crt"),
		"--cluster-signing-key-file=" + p("ca.key"),
		"--controllers=*",
		"--kube-api-qps=" + strconv.FormatFloat(o.kubeAPIQPS, 'f', -1, 64),
		"--kube-api-burst=" + strconv.Itoa(o.kubeAPIBurst),
		"--node-monitor-grace-period=" + o.nodeMonitorGracePeriod.String(),
		"--node-monitor-period=" + o.nodeMonitorPeriod.String(),
		"--node-startup-grace-period=" + o.nodeStartupGracePeriod.String(),
		"--profiling=false",
		"--v=" + v,
	}, logs)
	if err != nil {
		return err
	}
	children = append(children, cm)
	sched, err := spawn(self, "kube-scheduler", []string{
		"--kubeconfig=" + filepath.Join(dir, "scheduler.kubeconfig"),
		"--authentication-kubeconfig=" + filepath.Join(dir, "scheduler.kubeconfig"),
		"--authorization-kubeconfig=" + filepath.Join(dir, "scheduler.kubeconfig"),
		"--bind-address=127.0.0.1",
		"--secure-port=0",
		"--leader-elect=false",
		"--kube-api-qps=" + strconv.FormatFloat(o.kubeAPIQPS, 'f', -1, 64),
		"--kube-api-burst=" + strconv.Itoa(o.kubeAPIBurst),
		"--profiling=false",
		"--v=" + v,
	}, logs)
	if err != nil {
		return err
	}
	children = append(children, sched)

	// The default ServiceAccount appears once the controller-manager runs its
	// controllers; pods cannot be admitted before it exists.
	if err := waitFor(ctx, children, sigs, func() bool {
		return get(client, server+"/api/v1/namespaces/default/serviceaccounts/default") == http.StatusOK
	}); err != nil {
		return fmt.Errorf("controller-manager did not create the default ServiceAccount: %w (see %s)", err, logs)
	}

	info := map[string]any{
		"pid":        os.Getpid(),
		"server":     server,
		"kubeconfig": o.kubeconfig,
		"version":    kubernetesVersion,
	}
	if nd != nil {
		nodeStarted := time.Now()
		watch := func() []*child { return append(append([]*child{}, children...), nd.children()...) }
		if err := startNode(ctx, nd, o, ca, pki, apiPort, client, server, watch, sigs); err != nil {
			return fmt.Errorf("node: %w", err)
		}
		info["node"] = map[string]any{
			"name":               nodeName,
			"ip":                 nd.st.NodeIP,
			"host_ip":            nd.st.HostIP,
			"netns":              nd.st.Netns,
			"containerd_address": nd.st.socket(),
			"pod_cidr":           nd.st.PodCIDR,
			"service_cidr":       serviceCIDR,
			"dns_ip":             dnsServiceIP,
			"ready_s":            time.Since(nodeStarted).Seconds(),
		}
	}

	if err := writeKubeconfig(o.kubeconfig, server, pki, "ca", "admin", "kubernetes-admin"); err != nil {
		return err
	}
	info["ready_s"] = time.Since(started).Seconds()
	ready, _ := json.Marshal(info)
	if err := writeAtomic(filepath.Join(dir, "ready.json"), ready); err != nil {
		return err
	}
	fmt.Printf("ready %s in %.1fs, kubeconfig %s\n", server, time.Since(started).Seconds(), o.kubeconfig)

	// Serve until told to stop, restarting components on request; a component
	// that dies on its own ends the cluster, loudly.
	s := &supervisor{
		dir:     dir,
		admin:   client,
		server:  server,
		sigs:    sigs,
		watched: func() []*child { return append(append([]*child{}, children...), nd.children()...) },
		restartEtcd: func() error {
			etcd.Close()
			e, err := startEtcd(filepath.Join(dir, "etcd"), etcdPort, peerPort)
			etcd = e // nil when it failed: the teardown has nothing left to close
			return err
		},
		node: nd,
	}
	return s.serve()
}

var errStopped = errors.New("stopped by signal")

// waitFor polls cond until it holds, a child dies, a signal arrives or ctx ends.
func waitFor(ctx context.Context, children []*child, sigs chan os.Signal, cond func() bool) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if cond() {
			return nil
		}
		for _, c := range children {
			select {
			case <-c.exited:
				return fmt.Errorf("%s exited: %v", c.name, c.err)
			default:
			}
		}
		select {
		case s := <-sigs:
			return fmt.Errorf("%w: %s", errStopped, s)
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

func spawn(self, name string, args []string, logs string) (*child, error) {
	return spawnCommand(name, append([]string{self, name}, args...), logs)
}

// spawnCommand starts argv as the component called name, logging to logs/NAME.log.
func spawnCommand(name string, argv []string, logs string) (*child, error) {
	c := &child{name: name, argv: argv, logs: logs}
	if err := c.start(os.O_TRUNC); err != nil {
		return nil, err
	}
	return c, nil
}

func stopAll(children []*child) {
	// Reverse order: scheduler and controller-manager before the apiserver.
	for i := len(children) - 1; i >= 0; i-- {
		children[i].stop()
	}
}

func startEtcd(dataDir string, clientPort, peerPort int) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "parkfleet"
	cfg.Dir = dataDir
	cu, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", clientPort))
	pu, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", peerPort))
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	// Test data is thrown away with the folder: durability buys nothing here.
	cfg.UnsafeNoFsync = true
	cfg.LogLevel = "error"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, errors.New("not ready after 60s")
	}
}

// writePKI writes the cluster's authorities and certificates and returns the
// cluster CA (the node's certificates are issued later); extraHosts are more
// names of the API server.
func writePKI(pki string, extraHosts []string) (*authority, error) {
	ca, err := newAuthority(pki, "ca", "parkfleet-local-ca")
	if err != nil {
		return nil, err
	}
	fp, err := newAuthority(pki, "front-proxy-ca", "parkfleet-local-front-proxy-ca")
	if err != nil {
		return nil, err
	}
	hosts := append([]string{"127.0.0.1", serviceAPIIP, "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}, extraHosts...)
	steps := []func() error{
		func() error { return ca.issue(pki, "apiserver", "kube-apiserver", nil, hosts) },
		func() error {
			return ca.issue(pki, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, nil)
		},
		func() error { return ca.issue(pki, "admin", "kubernetes-admin", []string{"system:masters"}, nil) },
		func() error { return ca.issue(pki, "controller-manager", "system:kube-controller-manager", nil, nil) },
		func() error { return ca.issue(pki, "scheduler", "system:kube-scheduler", nil, nil) },
		func() error { return fp.issue(pki, "front-proxy-client", "front-proxy-client", nil, nil) },
		func() error { return writeServiceAccountKey(pki) },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return nil, err
		}
	}
	return ca, nil
}

func adminClient(pki string) (*http.Client, error) {
	pair, err := tls.LoadX509KeyPair(filepath.Join(pki, "admin.crt"), filepath.Join(pki, "admin.key"))
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(filepath.Join(pki, "ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}}},
	}, nil
}

func get(c *http.Client, u string) int {
	resp, err := c.Get(u)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}
