// Command pf-controlplane is parkfleet's local Kubernetes control plane for
// development, tests and the demo. It is one binary that plays several parts,
// the way hyperkube did:
//
//	pf-controlplane up --dir DIR [flags]     supervisor: certificates, embedded
//	                                         etcd, and the three components below
//	                                         as child processes of this binary
//	pf-controlplane kube-apiserver ...       the real kube-apiserver command
//	pf-controlplane kube-controller-manager  the real kube-controller-manager
//	pf-controlplane kube-scheduler ...       the real kube-scheduler
//	pf-controlplane kubelet ...              the real kubelet (the node of `up --node`)
//	pf-controlplane kube-proxy ...           the real kube-proxy (the node's Services)
//	pf-controlplane restart --dir DIR NAME   restart one component of DIR's running
//	                                         `up` (kube-apiserver, etcd, ...), which stays up
//	pf-controlplane node-clean --dir DIR     remove what a killed `up --node` left
//	pf-controlplane image ...                a one-layer OCI image archive of local files
//	pf-controlplane import-image --dir DIR A import image archives into DIR's node
//
// Components run as separate processes rather than goroutines because each of
// them owns process-global state (flags, klog, legacy metric registries) that
// was never meant to be shared.
package main

import (
	"context"
	"fmt"
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: pf-controlplane up|restart|version|kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy|node-clean|image|import-image [flags]")
		os.Exit(2)
	}
	part, args := os.Args[1], os.Args[2:]
	switch part {
	case "up":
		os.Exit(runUp(args))
	case "restart":
		os.Exit(runRestart(args))
	case "node-clean":
		os.Exit(runNodeClean(args))
	case "image":
		os.Exit(runImage(args))
	case "import-image":
		os.Exit(runImportImage(args))
	case "version":
		fmt.Println(kubernetesVersion)
	case "kube-apiserver":
		cmd := apiserver.NewAPIServerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kube-controller-manager":
		cmd := controllermanager.NewControllerManagerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kube-scheduler":
		cmd := scheduler.NewSchedulerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kubelet":
		cmd := kubelet.NewKubeletCommand(context.Background())
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kube-proxy":
		cmd := proxy.NewProxyCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	default:
		fmt.Fprintf(os.Stderr, "pf-controlplane: unknown part %q\n", part)
		os.Exit(2)
	}
}
