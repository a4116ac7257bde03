package teredotest_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"time"

	"github.com/teredo-go/teredo/stack"
	"github.com/teredo-go/teredo/teredotest"
)

// Outside tests (a demo, a CI script), Start builds the Internet and
// returns an error instead of failing a test.
func ExampleStart() {
	in, err := teredotest.Start()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer in.Close()
	h, _ := in.AddHost(netip.MustParseAddr("2001:db8::80"))
	url, _ := h.ServeHTTP(80, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "hello over IPv6")
	}))

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := stack.New(ctx, in.ClientConfig())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	resp, err := s.HTTPClient().Get(url + "/")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(string(body))
	// Output: hello over IPv6
}

// AddName gives a host a name that the Resolver of ClientConfig resolves,
// so that code under test can dial names as it would in production.
func ExampleInternet_AddName() {
	in, err := teredotest.Start()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer in.Close()
	h, _ := in.AddHost(netip.Addr{})
	in.AddName("www.example.test", h.Addr())
	addrs, err := in.ClientConfig().Resolver.LookupNetIP(context.Background(), "ip6", "www.example.test")
	fmt.Println(len(addrs) == 1 && addrs[0] == h.Addr(), err)
	// Output: true <nil>
}
