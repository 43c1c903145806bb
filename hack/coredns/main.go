// Command pf-coredns is CoreDNS built from its Go module with only the plugins the
// local cluster's node uses: it answers the cluster's DNS names (the chart's shard
// addresses among them) from the API server, and nothing else.
//
// CoreDNS's own main imports every plugin (clouds, etcd, ...); this one lists the
// few it needs, the way CoreDNS documents building with a chosen set of plugins.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// directives is the plugins' order in a server block, as in CoreDNS's plugin.cfg.
var directives = []string{
	"bind",
	"ready",
	"health",
	"errors",
	"log",
	"loadbalance",
	"cache",
	"kubernetes",
}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
