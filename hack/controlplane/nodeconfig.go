package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
)

// containerdConfig: Debian's containerd with a root, state and socket of its own.
// restrict_oom_score_adj: without CAP_SYS_RESOURCE (this kind of VM) a sandbox's
// oom_score_adj of -998 is refused and runc fails ("can't get final child's PID
// from pipe: EOF"); restricted, containerd never asks for less than its own score.
// overlayfs: a container's writable layer holds only what it writes (the native
// snapshotter copies the whole image into it, and the kubelet counts that copy against
// the pod's ephemeral-storage limit, evicting a 420 MB image's pod under a 256Mi limit).
const containerdConfig = `version = 2
root = "%[1]s/containerd/root"
state = "%[2]s/containerd"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "%[2]s/containerd.sock"

[ttrpc]
  address = "%[2]s/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "%[1]s/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "%[3]s"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "%[2]s/runc"
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "%[4]s"
    conf_dir = "%[1]s/cni/net.d"
    max_conf_num = 1
`

// cniConfig: one bridge inside the node's namespace (the network is named after
// it, as are libcni's cache files outside: see removeTaskLeftovers); its address is the pods'
// default route (Services are reached through it). No masquerade: pods reach
// nothing beyond the node.
const cniConfig = `{
  "cniVersion": "1.0.0",
  "name": "%[4]s",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "isDefaultGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "%[2]s", "gateway": "%[3]s"}]],
        "dataDir": "%[1]s/cni/ipam"
      }
    }
  ]
}
`

// kubeletConfig: the settings this machine needs (cgroups v1 with no systemd, no
// CAP_SYS_RESOURCE, swap allowed): cgroupfs, no per-QoS cgroups, nothing enforced;
// disk thresholds low, so that a full CI disk does not evict the tests' pods.
const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://%[2]s/containerd.sock
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
failCgroupV1: false
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: %[3]s/kubelet-serving.crt
tlsPrivateKeyFile: %[3]s/kubelet-serving.key
rotateCertificates: false
serverTLSBootstrap: false
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %[3]s/ca.crt
authorization:
  mode: Webhook
clusterDomain: cluster.local
clusterDNS: [%[4]s]
resolvConf: ""
podLogsDir: %[1]s/pod-logs
shutdownGracePeriod: 0s
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%%
  nodefs.inodesFree: 1%%
  imagefs.available: 1%%
`

// kubeProxyConfig: iptables rules in the node's namespace only; the conntrack
// settings (global or per namespace) are left as they are.
const kubeProxyConfig = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %[1]s/kube-proxy.kubeconfig
hostnameOverride: %[2]s
mode: iptables
clusterCIDR: %[3]s
nodePortAddresses: [primary]
healthzBindAddress: 0.0.0.0:%[4]d
metricsBindAddress: 127.0.0.1:10249
oomScoreAdj: 0
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`

// corefile: the cluster's zones only, from the API server; any other name is
// REFUSED (the node has no way out, and nothing to forward to).
const corefile = `cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind %[1]s
    errors
    health %[1]s:8080
    ready %[1]s:%[3]d
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig %[2]s/coredns.kubeconfig parkfleet-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    cache 5
    loadbalance
}
`

func writeNodeConfigs(st *nodeState, pki string) error {
	files := map[string]string{
		"containerd.toml":                 fmt.Sprintf(containerdConfig, st.Dir, st.RunDir, pauseImage, cniBinDir),
		"cni/net.d/10-parkfleet.conflist": fmt.Sprintf(cniConfig, st.Dir, st.PodCIDR, st.PodGateway, st.Netns),
		"kubelet.yaml":                    fmt.Sprintf(kubeletConfig, st.Dir, st.RunDir, pki, dnsServiceIP),
		"kube-proxy.yaml":                 fmt.Sprintf(kubeProxyConfig, st.Dir, nodeName, st.PodCIDR, kubeProxyHealthz),
		"Corefile":                        fmt.Sprintf(corefile, st.NodeIP, st.Dir, corednsReadyPort),
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(st.Dir, name), []byte(text), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// applyDNSObjects creates what CoreDNS needs in the API: read access for its user,
// and the kube-dns Service at dnsServiceIP with an EndpointSlice to the node IP,
// where CoreDNS listens (kube-proxy turns one into the other).
func applyDNSObjects(admin *http.Client, server, nodeIP string) error {
	objects := []struct {
		path string
		body map[string]any
	}{
		{"/apis/rbac.authorization.k8s.io/v1/clusterroles", map[string]any{
			"metadata": map[string]any{"name": "parkfleet:coredns"},
			"rules": []any{
				map[string]any{"apiGroups": []string{""}, "resources": []string{"endpoints", "services", "pods", "namespaces"}, "verbs": []string{"list", "watch"}},
				map[string]any{"apiGroups": []string{"discovery.k8s.io"}, "resources": []string{"endpointslices"}, "verbs": []string{"list", "watch"}},
			},
		}},
		{"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", map[string]any{
			"metadata": map[string]any{"name": "parkfleet:coredns"},
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "parkfleet:coredns"},
			"subjects": []any{map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:parkfleet-coredns"}},
		}},
		{"/api/v1/namespaces/kube-system/services", map[string]any{
			"metadata": map[string]any{"name": "kube-dns", "labels": map[string]string{"k8s-app": "kube-dns"}},
			"spec": map[string]any{
				"clusterIP": dnsServiceIP,
				"ports": []any{
					map[string]any{"name": "dns", "port": 53, "protocol": "UDP"},
					map[string]any{"name": "dns-tcp", "port": 53, "protocol": "TCP"},
				},
			},
		}},
		{"/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices", map[string]any{
			"metadata": map[string]any{
				"name": "kube-dns-" + nodeName,
				"labels": map[string]string{
					"kubernetes.io/service-name":             "kube-dns",
					"endpointslice.kubernetes.io/managed-by": "controlplane.parkfleet.io",
				},
			},
			"addressType": "IPv4",
			"endpoints":   []any{map[string]any{"addresses": []string{nodeIP}, "conditions": map[string]any{"ready": true}, "nodeName": nodeName}},
			"ports": []any{
				map[string]any{"name": "dns", "port": 53, "protocol": "UDP"},
				map[string]any{"name": "dns-tcp", "port": 53, "protocol": "TCP"},
			},
		}},
	}
	for _, o := range objects {
		b, _ := json.Marshal(o.body)
		resp, err := admin.Post(server+o.path, "application/json", bytes.NewReader(b))
		if err != nil {
			return err
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusConflict {
			return fmt.Errorf("POST %s: %s: %s", o.path, resp.Status, msg)
		}
	}
	return nil
}
