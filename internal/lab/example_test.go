package lab_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/teredo-go/teredo/internal/lab"
)

// A test that needs a Teredo server, a client behind a home router and the IPv6-only
// host: the lab skips without root (and fails under CI=true), and removes everything
// when the test ends.
func ExampleNew() {
	var t *testing.T // the test's own t
	l := lab.New(t, lab.Options{Clients: []lab.ClientSpec{{Name: "a1", NAT: lab.HomeRouter}}})
	srv := lab.StartMiredoServer(t, l.Server)
	lab.StartMiredoRelay(t, l.Relay, lab.MiredoRelayOptions{})
	c := lab.StartMiredoClient(t, l.Clients["a1"], srv.Primary, lab.MiredoClientOptions{})
	f := l.V6Host.ServeFile(t, netip.AddrPortFrom(lab.V6HostAddr, 8080), 1<<20)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got, err := c.Host.Curl(ctx, f.URL)
	if err == nil {
		err = f.Verify(got)
	}
	fmt.Println(c.Addr, err)
}
