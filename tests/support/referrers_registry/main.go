// A registry with the OCI referrers API, for tests: go-containerregistry's in-memory
// registry (pkg/registry) with its referrers support on, which its own cmd/registry leaves
// off. The Debian docker-registry (distribution 2.8) and distribution v3.1.2 lack the API.
package main

import (
	"flag"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address (loopback)")
	flag.Parse()
	listener, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("serving on %s", listener.Addr())
	server := &http.Server{Handler: registry.New(registry.WithReferrersSupport(true)), ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(server.Serve(listener))
}
