package main

// The local cluster's real worker node (`up --node`): Debian's containerd and runc,
// the kubelet and kube-proxy of this binary, and CoreDNS, all inside one network
// namespace the node creates. Only a veth pair joins it to the host: the host end
// holds a /30 from linkRange, the node end is the node's InternalIP. Pod and Service
// addresses (and kube-proxy's and the kubelet's iptables rules) exist only inside
// that namespace and the pods' own namespaces, so deleting it removes them all.

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	nodeName = "parkfleet-node"
	// Addresses come from 198.18.0.0/15 (RFC 2544, reserved for network testing), so
	// they cannot clash with a LAN, a VPN or a cloud VPC (10/8, 172.16/12, 192.168/16).
	// Node slot N's pods get podBase.N.0/24 (N < maxSlots < 255), its gateway .1.
	podBase     = "198.18"
	serviceCIDR = "198.19.0.0/16"
	// serviceAPIIP is the `kubernetes` Service (the first address of serviceCIDR).
	serviceAPIIP = "198.19.0.1"
	dnsServiceIP = "198.19.0.10"
	// linkBase.0/24 holds one /30 per node on this machine: .4N+1 host end, .4N+2 node end.
	linkBase   = "198.18.255"
	maxSlots   = 64
	pauseImage = "parkfleet.local/pause:1"
	cniBinDir  = "/usr/lib/cni"
	// kube-proxy's healthz and CoreDNS's ready endpoint on the node IP, polled from the host.
	corednsReadyPort = 8181
	kubeProxyHealthz = 10256
)

// nodeState is what the node creates on this machine; it is written as soon as the
// node's namespace is claimed and again before the kubelet changes kernel settings,
// so that `node-clean` can undo it all after the supervisor was killed.
type nodeState struct {
	Slot     int    `json:"slot"`
	Netns    string `json:"netns"`
	HostLink string `json:"host_link"`
	HostIP   string `json:"host_ip"`
	NodeIP   string `json:"node_ip"`
	// PodCIDR is the node's pods' range, routed from this machine through NodeIP (the
	// API server calls webhooks and the virtual kubelets' API at pod addresses).
	PodCIDR    string `json:"pod_cidr"`
	PodGateway string `json:"pod_gateway"`
	// RunDir holds containerd's socket and state and runc's state (short paths:
	// unix sockets are limited to 108 bytes).
	RunDir string `json:"run_dir"`
	// Dir holds containerd's root, the kubelet's root, the CNI config and leases.
	Dir string `json:"dir"`
	// Sysctls are the kernel settings the kubelet changes (vm.overcommit_memory,
	// kernel.panic, ...; they are not per namespace), with their values before.
	Sysctls map[string]string `json:"sysctls,omitempty"`
	// NewHostDirs are folders outside the node's own that did not exist before it
	// and that its programs create whatever their configuration: containerd 1.6's
	// shim sockets (/run/containerd/s), libcni's cache (/var/lib/cni/results), the
	// kubelet's links to container logs (/var/log/containers) and its device-plugin
	// socket (/var/lib/kubelet/device-plugins).
	// Each is removed when empty, deepest first.
	NewHostDirs []string `json:"new_host_dirs,omitempty"`
	// RunNetnsMounted: /run/netns was a mount point before. The first `ip netns add`
	// on a machine makes it one (a shared bind of itself); if the node's was the
	// first, the mount and the folder go when no namespace is left in it.
	RunNetnsMounted bool `json:"run_netns_mounted"`
}

// hostDirs are the folders of NewHostDirs, deepest first.
var hostDirs = []string{
	"/run/containerd/s", "/run/containerd", "/var/lib/cni/results", "/var/lib/cni",
	containerLogLinks, devicePluginDir, "/var/lib/kubelet",
}

// devicePluginDir holds the kubelet's device-plugin socket, whatever its --root-dir
// (a constant of the kubelet: a second node's kubelet replaces the socket there).
const devicePluginDir = "/var/lib/kubelet/device-plugins"

// containerLogLinks is where the kubelet links each container's log (a constant of
// the kubelet, not a setting); the links point into the node's pod-logs folder.
const containerLogLinks = "/var/log/containers"

func (s *nodeState) socket() string    { return filepath.Join(s.RunDir, "containerd.sock") }
func (s *nodeState) netnsPath() string { return filepath.Join("/run/netns", s.Netns) }
func statePath(dir string) string      { return filepath.Join(dir, "node", "state.json") }

func (s *nodeState) save(dir string) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(statePath(dir), b, 0o600)
}

func loadNodeState(dir string) (*nodeState, error) {
	b, err := os.ReadFile(statePath(dir))
	if err != nil {
		return nil, err
	}
	s := &nodeState{}
	return s, json.Unmarshal(b, s)
}

// node is a started node: its processes and what they need to be stopped.
type node struct {
	st         *nodeState
	dir        string // the cluster's state folder
	logs       string
	containerd *child
	others     []*child // kubelet, kube-proxy, CoreDNS
	apiProxy   net.Listener
}

// nodeTools are the programs the node runs or uses, with where they come from.
var nodeTools = []struct{ path, from string }{
	{"containerd", "Debian's containerd (hack/node-packages.sh)"},
	{"ctr", "Debian's containerd (hack/node-packages.sh)"},
	{"runc", "Debian's runc (hack/node-packages.sh)"},
	{"iptables", "Debian's iptables (hack/node-packages.sh)"},
	{filepath.Join(cniBinDir, "bridge"), "Debian's containernetworking-plugins (hack/node-packages.sh)"},
	{filepath.Join(cniBinDir, "host-local"), "Debian's containernetworking-plugins (hack/node-packages.sh)"},
	{filepath.Join(cniBinDir, "loopback"), "Debian's containernetworking-plugins (hack/node-packages.sh)"},
	{"ip", "iproute2"},
	{"nsenter", "util-linux"},
}

// checkNodePrerequisites says what is missing before anything is created.
func checkNodePrerequisites(o upOptions) error {
	if os.Geteuid() != 0 {
		return errors.New("--node needs root: it creates a network namespace, mounts and cgroups")
	}
	var missing []string
	for _, t := range nodeTools {
		if _, err := exec.LookPath(t.path); err != nil {
			missing = append(missing, fmt.Sprintf("%s (%s)", t.path, t.from))
		}
	}
	for _, b := range []string{o.corednsBinary, o.pauseBinary} {
		if _, err := os.Stat(b); err != nil {
			missing = append(missing, b+" (make node)")
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("--node: missing %s", strings.Join(missing, ", "))
	}
	return nil
}

func run(argv ...string) error {
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// allocateNodeNetwork picks a free slot, then creates the node's network
// namespace and the veth pair that joins it to the host. Creating the namespace
// claims the slot: `ip netns add` fails when the name exists, so two clusters
// starting at once cannot pick the same one.
func allocateNodeNetwork(dir string) (*nodeState, error) {
	nodeDir := filepath.Join(dir, "node")
	// Each start is a fresh node, like the fresh etcd.
	if err := os.RemoveAll(nodeDir); err != nil {
		return nil, fmt.Errorf("remove the previous node's folder: %w", err)
	}
	if err := os.MkdirAll(nodeDir, 0o700); err != nil {
		return nil, err
	}
	for slot := 0; slot < maxSlots; slot++ {
		st := &nodeState{
			Slot:       slot,
			Netns:      fmt.Sprintf("parkfleet-node-%d", slot),
			HostLink:   fmt.Sprintf("pf-node-%d", slot),
			HostIP:     fmt.Sprintf("%s.%d", linkBase, 4*slot+1),
			NodeIP:     fmt.Sprintf("%s.%d", linkBase, 4*slot+2),
			PodCIDR:    fmt.Sprintf("%s.%d.0/24", podBase, slot),
			PodGateway: fmt.Sprintf("%s.%d.1", podBase, slot),
			RunDir:     fmt.Sprintf("/run/parkfleet-node-%d", slot),
			Dir:        nodeDir,
		}
		for _, d := range hostDirs {
			if !exists(d) {
				st.NewHostDirs = append(st.NewHostDirs, d)
			}
		}
		if !exists("/run/netns") {
			st.NewHostDirs = append(st.NewHostDirs, "/run/netns")
		}
		st.RunNetnsMounted = isMountPoint("/run/netns")
		if exists(st.netnsPath()) || exists("/sys/class/net/"+st.HostLink) || exists(st.RunDir) {
			continue
		}
		if err := run("ip", "netns", "add", st.Netns); err != nil {
			continue // taken meanwhile
		}
		if err := st.save(dir); err != nil {
			return st, err
		}
		return st, createNodeNetwork(st)
	}
	return nil, fmt.Errorf("no free node slot among %d: see `ip netns list` for parkfleet-node-* left behind", maxSlots)
}

func createNodeNetwork(st *nodeState) error {
	in := func(argv ...string) []string { return append([]string{"ip", "-n", st.Netns}, argv...) }
	steps := [][]string{
		{"ip", "link", "add", st.HostLink, "type", "veth", "peer", "name", "eth0", "netns", st.Netns},
		{"ip", "addr", "add", st.HostIP + "/30", "dev", st.HostLink},
		{"ip", "link", "set", st.HostLink, "up"},
		in("link", "set", "lo", "up"),
		in("addr", "add", st.NodeIP+"/30", "dev", "eth0"),
		in("link", "set", "eth0", "up"),
		// Goes with the veth when the node stops.
		{"ip", "route", "add", st.PodCIDR, "via", st.NodeIP, "dev", st.HostLink},
	}
	for _, s := range steps {
		if err := run(s...); err != nil {
			return err
		}
	}
	// Per-namespace settings: the node routes between eth0 and the pods' bridge, and
	// bridged pod-to-pod traffic passes kube-proxy's rules (a Service's reply path).
	for _, kv := range [][2]string{
		{"net/ipv4/ip_forward", "1"},
		{"net/bridge/bridge-nf-call-iptables", "1"},
	} {
		if err := run(st.inNetns("sh", "-c", fmt.Sprintf("echo %s > /proc/sys/%s", kv[1], kv[0]))...); err != nil {
			return err
		}
	}
	return os.MkdirAll(st.RunDir, 0o700)
}

// kubeletSysctls are the global kernel settings the kubelet sets at start
// (KernelTunableModify); the node puts them back when it stops.
var kubeletSysctls = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
}

func (st *nodeState) recordSysctls(dir string) error {
	st.Sysctls = map[string]string{}
	for _, k := range kubeletSysctls {
		b, err := os.ReadFile("/proc/sys/" + k)
		if err != nil {
			return err
		}
		st.Sysctls[k] = strings.TrimSpace(string(b))
	}
	return st.save(dir)
}

// inNetns is argv run inside the node's network namespace (same mount namespace
// as the host, so that the kubelet's volume mounts are seen by containerd and runc).
func (st *nodeState) inNetns(argv ...string) []string {
	return append([]string{"nsenter", "--net=" + st.netnsPath(), "--"}, argv...)
}

// startNode writes the node's certificates and configuration, starts containerd,
// the kubelet, kube-proxy and CoreDNS, and waits until the Node is Ready and DNS
// answers. The caller stops it with n.stop(), also when startNode fails.
func startNode(ctx context.Context, n *node, o upOptions, ca *authority, pki string, apiPort int, admin *http.Client, server string, watch func() []*child, sigs chan os.Signal) error {
	st := n.st
	nodeDir := st.Dir
	for _, d := range []string{"containerd/root", "kubelet", "pod-logs", "cni/net.d", "cni/ipam"} {
		if err := os.MkdirAll(filepath.Join(nodeDir, d), 0o700); err != nil {
			return err
		}
	}
	// The kubelet, kube-proxy and CoreDNS reach the API server at the same
	// address as on the host: 127.0.0.1:PORT inside the namespace is relayed to it.
	// Pods reach it at the node IP (the `kubernetes` Service's endpoint).
	l, err := listenInNetns(st.netnsPath(), fmt.Sprintf("0.0.0.0:%d", apiPort))
	if err != nil {
		return fmt.Errorf("API relay in the node's namespace: %w", err)
	}
	n.apiProxy = l
	go relay(l, fmt.Sprintf("127.0.0.1:%d", apiPort))

	inner := fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	for _, c := range []struct {
		name, cn    string
		orgs, hosts []string
	}{
		{"kubelet", "system:node:" + nodeName, []string{"system:nodes"}, nil},
		{"kubelet-serving", "system:node:" + nodeName, []string{"system:nodes"}, []string{st.NodeIP, nodeName}},
		{"kube-proxy", "system:kube-proxy", nil, nil},
		{"coredns", "system:parkfleet-coredns", nil, nil},
	} {
		if err := ca.issue(pki, c.name, c.cn, c.orgs, c.hosts); err != nil {
			return err
		}
		if c.hosts == nil {
			if err := writeKubeconfig(filepath.Join(nodeDir, c.name+".kubeconfig"), inner, pki, "ca", c.name, c.cn); err != nil {
				return err
			}
		}
	}
	if err := writeNodeConfigs(st, pki); err != nil {
		return err
	}

	// containerd, then the sandbox image it needs before the kubelet's first pod.
	n.containerd, err = spawnCommand("containerd", st.inNetns("containerd", "--config", filepath.Join(nodeDir, "containerd.toml")), n.logs)
	if err != nil {
		return err
	}
	if err := waitFor(ctx, watch(), sigs, func() bool { return criReady(st.socket()) }); err != nil {
		return fmt.Errorf("containerd's CRI: %w (see %s)", err, filepath.Join(n.logs, "containerd.log"))
	}
	pauseTar := filepath.Join(nodeDir, "pause.tar")
	if err := writeImage(pauseTar, imageSpec{
		ref:        pauseImage,
		files:      []imageFile{{src: o.pauseBinary, dst: "/pause", mode: 0o755}},
		entrypoint: []string{"/pause"},
	}); err != nil {
		return fmt.Errorf("pause image: %w", err)
	}
	if err := importImage(st.socket(), pauseTar); err != nil {
		return err
	}

	if err := st.recordSysctls(n.dir); err != nil {
		return err
	}
	kubelet, err := spawnCommand("kubelet", st.inNetns(
		mustSelf(), "kubelet",
		"--config="+filepath.Join(nodeDir, "kubelet.yaml"),
		"--kubeconfig="+filepath.Join(nodeDir, "kubelet.kubeconfig"),
		"--root-dir="+filepath.Join(nodeDir, "kubelet"),
		"--hostname-override="+nodeName,
		"--node-ip="+st.NodeIP,
		"--node-labels=parkfleet.io/real-node=true",
		"--v="+strconv.Itoa(o.verbosity),
	), n.logs)
	if err != nil {
		return err
	}
	n.others = append(n.others, kubelet)
	if err := waitFor(ctx, watch(), sigs, func() bool { return nodeReady(admin, server) }); err != nil {
		return fmt.Errorf("node %s not Ready: %w (see %s)", nodeName, err, filepath.Join(n.logs, "kubelet.log"))
	}

	proxy, err := spawnCommand("kube-proxy", st.inNetns(
		mustSelf(), "kube-proxy",
		"--config="+filepath.Join(nodeDir, "kube-proxy.yaml"),
		"--v="+strconv.Itoa(o.verbosity),
	), n.logs)
	if err != nil {
		return err
	}
	n.others = append(n.others, proxy)
	if err := waitFor(ctx, watch(), sigs, st.kubeProxyReady); err != nil {
		return fmt.Errorf("kube-proxy not healthy: %w (see %s)", err, filepath.Join(n.logs, "kube-proxy.log"))
	}

	if err := applyDNSObjects(admin, server, st.NodeIP); err != nil {
		return fmt.Errorf("kube-dns Service: %w", err)
	}
	dns, err := spawnCommand("coredns", st.inNetns(o.corednsBinary, "-conf", filepath.Join(nodeDir, "Corefile")), n.logs)
	if err != nil {
		return err
	}
	n.others = append(n.others, dns)
	if err := waitFor(ctx, watch(), sigs, st.corednsReady); err != nil {
		return fmt.Errorf("CoreDNS not ready: %w (see %s)", err, filepath.Join(n.logs, "coredns.log"))
	}
	return nil
}

var plainClient = &http.Client{Timeout: 2 * time.Second}

// kubeProxyReady says whether kube-proxy's healthz answers on the node IP.
func (st *nodeState) kubeProxyReady() bool {
	return get(plainClient, fmt.Sprintf("http://%s:%d/healthz", st.NodeIP, kubeProxyHealthz)) == http.StatusOK
}

// corednsReady says whether CoreDNS's ready endpoint answers on the node IP.
func (st *nodeState) corednsReady() bool {
	return get(plainClient, fmt.Sprintf("http://%s:%d/ready", st.NodeIP, corednsReadyPort)) == http.StatusOK
}

func mustSelf() string {
	self, err := os.Executable()
	if err != nil {
		panic(err)
	}
	return self
}

// children are the node's processes, for the supervisor to watch.
func (n *node) children() []*child {
	if n == nil || n.containerd == nil {
		return nil
	}
	return append([]*child{n.containerd}, n.others...)
}

// stop stops the node's processes and removes everything it created: the pods
// (through containerd's CRI, which also removes their network namespaces and
// veths), containerd, leftover mounts, the node's namespace (its veth pair and
// iptables rules go with it) and its run folder; the kernel settings go back.
func (n *node) stop() error {
	if n == nil {
		return nil
	}
	for i := len(n.others) - 1; i >= 0; i-- {
		n.others[i].stop()
	}
	if n.apiProxy != nil {
		n.apiProxy.Close()
	}
	var errs []error
	if n.containerd != nil {
		if err := removeAllPods(n.st.socket()); err != nil {
			errs = append(errs, fmt.Errorf("remove pods: %w", err))
		}
		n.containerd.stop()
	}
	if err := cleanNode(n.dir, n.st); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// cleanNode removes what the node created and may have left: processes of its
// containerd (shims, containers), mounts under its folders, its network namespace,
// its run folder; it restores the kernel settings. Safe to run more than once.
func cleanNode(dir string, st *nodeState) error {
	var errs []error
	killNodeProcesses(st)
	removeTaskLeftovers(st)
	for _, root := range []string{st.Dir, st.RunDir} {
		if err := unmountUnder(root); err != nil {
			errs = append(errs, err)
		}
	}
	if exists(st.netnsPath()) {
		if err := run("ip", "netns", "delete", st.Netns); err != nil {
			errs = append(errs, err)
		}
	}
	// The host end goes with the namespace's end; a link left (namespace
	// creation failed half way) is removed here.
	// The kernel removes it once the namespace's last process is gone, which may be
	// just now: a link gone meanwhile is no error.
	if exists("/sys/class/net/" + st.HostLink) {
		if err := run("ip", "link", "delete", st.HostLink); err != nil && exists("/sys/class/net/"+st.HostLink) {
			errs = append(errs, err)
		}
	}
	for k, v := range st.Sysctls {
		if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restore %s: %w", k, err))
		}
	}
	if err := os.RemoveAll(st.RunDir); err != nil {
		errs = append(errs, err)
	}
	removeEmptyCgroups()
	removeLogLinks(st)
	if left, _ := os.ReadDir("/run/netns"); !st.RunNetnsMounted && len(left) == 0 && isMountPoint("/run/netns") {
		if err := syscall.Unmount("/run/netns", syscall.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmount /run/netns: %w", err))
		}
	}
	for _, d := range st.NewHostDirs {
		if d == devicePluginDir {
			_ = os.Remove(filepath.Join(d, "kubelet.sock"))
		}
	}
	for _, d := range st.NewHostDirs {
		_ = os.Remove(d) // only when empty: another program may use it meanwhile
	}
	if len(errs) == 0 {
		_ = os.Remove(statePath(dir))
	}
	return errors.Join(errs...)
}

// killNodeProcesses ends what outlived a clean stop: containers left in runc's
// state (removed with their cgroups by `runc delete --force`), then processes in
// the node's network namespace and containerd's shims (which run in a session of
// their own), found by the namespace or by the node's folders on their command line.
func killNodeProcesses(st *nodeState) {
	runcRoot := filepath.Join(st.RunDir, "runc", "k8s.io")
	if out, err := exec.Command("runc", "--root", runcRoot, "list", "-q").Output(); err == nil {
		for _, id := range strings.Fields(string(out)) {
			_ = exec.Command("runc", "--root", runcRoot, "delete", "--force", id).Run()
		}
	}
	var nsIno uint64
	if fi, err := os.Stat(st.netnsPath()); err == nil {
		nsIno = fi.Sys().(*syscall.Stat_t).Ino
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		mine := false
		if nsIno != 0 {
			var s syscall.Stat_t
			if syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &s) == nil && s.Ino == nsIno {
				mine = true
			}
		}
		if !mine {
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			mine = strings.Contains(string(cmdline), st.RunDir+"/") || strings.Contains(string(cmdline), st.Dir+"/")
		}
		if mine {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// removeTaskLeftovers removes the files that containerd keeps outside its own
// folders for each task (pod sandbox or container) and that a killed containerd
// leaves: the shim's socket, named after a hash of containerd's address, the
// namespace and the task (as containerd 1.6 names it), and libcni's cached results.
func removeTaskLeftovers(st *nodeState) {
	tasks, _ := os.ReadDir(filepath.Join(st.RunDir, "containerd", "io.containerd.runtime.v2.task", "k8s.io"))
	for _, t := range tasks {
		id := t.Name()
		sum := sha256.Sum256([]byte(filepath.Join(st.socket(), "k8s.io", id)))
		_ = os.Remove(fmt.Sprintf("/run/containerd/s/%x", sum))
		_ = os.Remove(filepath.Join("/var/lib/cni/results", st.Netns+"-"+id+"-eth0"))
		_ = os.Remove(filepath.Join("/var/lib/cni/results", "cni-loopback-"+id+"-lo"))
	}
}

// removeLogLinks removes the kubelet's links to this node's container logs.
func removeLogLinks(st *nodeState) {
	links, _ := os.ReadDir(containerLogLinks)
	for _, l := range links {
		p := filepath.Join(containerLogLinks, l.Name())
		if target, err := os.Readlink(p); err == nil && strings.HasPrefix(target, st.Dir+"/") {
			_ = os.Remove(p)
		}
	}
}

// unmountUnder lazily unmounts every mount point at or below root, deepest first
// (the kubelet's rshared bind of its root folder, pod volumes, containerd's
// rootfs binds and network namespace files).
func unmountUnder(root string) error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var points []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		p := unescapeMount(f[4])
		if p == root || strings.HasPrefix(p, root+"/") {
			points = append(points, p)
		}
	}
	var errs []error
	for i := len(points) - 1; i >= 0; i-- {
		if err := syscall.Unmount(points[i], syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", points[i], err))
		}
	}
	return errors.Join(errs...)
}

// isMountPoint says whether p is a mount point (per /proc/self/mountinfo).
func isMountPoint(p string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 5 && unescapeMount(f[4]) == p {
			return true
		}
	}
	return false
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var out strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				out.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		out.WriteByte(s[i])
	}
	return out.String()
}

// removeEmptyCgroups removes runc's parent cgroup of the pods' containers
// (/k8s.io, containerd's namespace) in each hierarchy when nothing is left in it.
func removeEmptyCgroups() {
	hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*/k8s.io")
	for _, h := range hierarchies {
		_ = os.Remove(h)
	}
}

// nodeReady says whether the Node exists with condition Ready=True.
func nodeReady(admin *http.Client, server string) bool {
	resp, err := admin.Get(server + "/api/v1/nodes/" + nodeName)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false
	}
	var n struct {
		Status struct {
			Conditions []struct{ Type, Status string } `json:"conditions"`
		} `json:"status"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&n); err != nil {
		return false
	}
	for _, c := range n.Status.Conditions {
		if c.Type == "Ready" {
			return c.Status == "True"
		}
	}
	return false
}

// runNodeClean is `pf-controlplane node-clean --dir DIR`: removes what a node of
// that cluster left after its supervisor was killed (SIGKILL skips its cleanup).
func runNodeClean(args []string) int {
	if len(args) != 2 || args[0] != "--dir" {
		fmt.Fprintln(os.Stderr, "usage: pf-controlplane node-clean --dir DIR")
		return 2
	}
	dir, err := filepath.Abs(args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	st, err := loadNodeState(dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "node-clean: %v\n", err)
		return 1
	}
	if criReady(st.socket()) {
		_ = removeAllPods(st.socket())
	}
	if err := cleanNode(dir, st); err != nil {
		fmt.Fprintf(os.Stderr, "node-clean: %v\n", err)
		return 1
	}
	fmt.Printf("removed node %s (namespace %s)\n", nodeName, st.Netns)
	return 0
}
