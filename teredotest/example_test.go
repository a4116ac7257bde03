package teredotest_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"time"

	"github.com/teredo-go/teredo/dialer"
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
	s, err := stack.New(ctx, stack.Config{
		Servers:    in.Servers(),
		LocalAddr:  netip.MustParseAddrPort("127.0.0.1:0"),
		IPv4Filter: in.IPv4Filter(),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	tr := &http.Transport{DialContext: dialer.New(s).DialContext}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get(url + "/")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(string(body))
	// Output: hello over IPv6
}
