package socks5_test

import (
	"fmt"
	"io"
	"net"
	"time"

	"golang.org/x/net/proxy"

	"github.com/teredo-go/teredo/socks5"
)

func ExampleServer() {
	// A destination for the proxy to reach.
	dst, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer dst.Close()
	go func() {
		c, err := dst.Accept()
		if err != nil {
			return
		}
		c.Write([]byte("hello through SOCKS5\n"))
		c.Close()
	}()

	srv := &socks5.Server{
		// cmd/teredo-socks passes the Teredo dialer here; anything with
		// this signature will do.
		Dial:             (&net.Dialer{}).DialContext,
		HandshakeTimeout: 5 * time.Second,
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go srv.Serve(ln)
	defer srv.Close()

	client, err := proxy.SOCKS5("tcp", ln.Addr().String(), nil, proxy.Direct)
	if err != nil {
		panic(err)
	}
	c, err := client.Dial("tcp", dst.Addr().String())
	if err != nil {
		panic(err)
	}
	defer c.Close()
	b, _ := io.ReadAll(c)
	fmt.Print(string(b))
	fmt.Println("succeeded replies:", srv.Stats().Replies[socks5.ReplySucceeded])
	// Output:
	// hello through SOCKS5
	// succeeded replies: 1
}
