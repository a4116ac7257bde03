package stack_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/netip"
	"time"

	"github.com/teredo-go/teredo/stack"
	"github.com/teredo-go/teredo/teredotest"
)

// The README's "Embedding the library" section shows serveAndFetch as
// written here; TestREADMEEmbedding keeps the two equal.

// serveAndFetch joins the Teredo network with cfg, serves handler on port
// 8080 of its IPv6 address and fetches a page from an IPv6-only site.
func serveAndFetch(ctx context.Context, cfg stack.Config, handler http.Handler) (string, error) {
	// In production: cfg := stack.Config{Servers: []netip.Addr{serverIPv4}}
	s, err := stack.New(ctx, cfg) // returns once qualified, or says which server did not answer
	if err != nil {
		return "", err
	}
	defer s.Close()
	log.Printf("my IPv6 address: %v", s.Addr())

	ln, err := s.Listen("tcp6", ":8080") // a net.Listener on the Teredo address
	if err != nil {
		return "", err
	}
	go http.Serve(ln, handler)

	// Also s.Dial, s.DialContext, s.ListenPacket: net.Conn and net.PacketConn.
	resp, err := s.HTTPClient().Get("http://ipv6.example.net/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return string(body), err
}

// The README's embedding code, run against an in-process Teredo internet:
// teredotest's ClientConfig points the stack at its server and resolves its
// hosts' names.
func Example_embedding() {
	in, err := teredotest.Start()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer in.Close()
	site, err := in.AddHost(netip.Addr{})
	if err != nil {
		fmt.Println(err)
		return
	}
	if _, err := site.ServeHTTP(80, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "hello from an IPv6-only site")
	})); err != nil {
		fmt.Println(err)
		return
	}
	in.AddName("ipv6.example.net", site.Addr())

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	body, err := serveAndFetch(ctx, in.ClientConfig(), http.NotFoundHandler())
	fmt.Println(body, err)
	// Output: hello from an IPv6-only site <nil>
}
