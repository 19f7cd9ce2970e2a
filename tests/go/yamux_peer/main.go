// yamux_peer checks plugbay's Python yamux (plugbay.core.yamux) against hashicorp/yamux itself,
// the library go-plugin's multiplexed broker uses.
//
//	yamux_peer client|server NETWORK ADDRESS STREAMS BYTES
//
// client: dial ADDRESS and run a yamux client session; server: listen on ADDRESS, accept one
// connection, run a yamux server session. Either way it then (1) opens STREAMS streams, writes
// BYTES bytes of a pattern on each and checks the peer echoes them back exactly, then closes;
// (2) accepts one stream the peer opens and echoes it until EOF. Prints "ok" and exits 0, or
// prints the error and exits 1. A watchdog ends it after 60 s.
package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/hashicorp/yamux"
	"plugbay.test/yamuxutil"
)

func main() {
	if len(os.Args) != 6 {
		fmt.Println("usage: yamux_peer client|server NETWORK ADDRESS STREAMS BYTES")
		os.Exit(2)
	}
	yamuxutil.Watchdog(60 * time.Second)
	mode, network, address := os.Args[1], os.Args[2], os.Args[3]
	streams, _ := strconv.Atoi(os.Args[4])
	size, _ := strconv.Atoi(os.Args[5])

	var conn net.Conn
	var err error
	if mode == "client" {
		conn, err = net.Dial(network, address)
	} else {
		var ln net.Listener
		ln, err = net.Listen(network, address)
		if err == nil {
			fmt.Println("listening")
			conn, err = ln.Accept()
		}
	}
	if err != nil {
		yamuxutil.Fail(err)
	}
	cfg := yamuxutil.QuietConfig()
	cfg.Logger = nil
	var sess *yamux.Session
	if mode == "client" {
		sess, err = yamux.Client(conn, cfg)
	} else {
		sess, err = yamux.Server(conn, cfg)
	}
	if err != nil {
		yamuxutil.Fail(err)
	}

	if _, err := sess.Ping(); err != nil {
		yamuxutil.Fail(fmt.Errorf("ping: %w", err))
	}
	pattern := make([]byte, size)
	for i := range pattern {
		pattern[i] = byte(i * 7)
	}
	for n := 0; n < streams; n++ {
		st, err := sess.Open()
		if err != nil {
			yamuxutil.Fail(fmt.Errorf("open: %w", err))
		}
		// This yamux's Close also ends reading, so the echo is read back by length, not to EOF.
		done := make(chan error, 1)
		go func() {
			_, err := st.Write(pattern)
			done <- err
		}()
		got := make([]byte, size)
		if _, err := io.ReadFull(st, got); err != nil {
			yamuxutil.Fail(fmt.Errorf("read echo: %w", err))
		}
		if err := <-done; err != nil {
			yamuxutil.Fail(fmt.Errorf("write: %w", err))
		}
		if !bytes.Equal(got, pattern) {
			yamuxutil.Fail(fmt.Errorf("stream %d: echo of %d bytes differs", n, size))
		}
		st.Close()
	}
	st, err := sess.Accept()
	if err != nil {
		yamuxutil.Fail(fmt.Errorf("accept: %w", err))
	}
	if _, err := io.Copy(st, st); err != nil {
		yamuxutil.Fail(fmt.Errorf("echo: %w", err))
	}
	st.Close()
	fmt.Println("ok")
	time.Sleep(200 * time.Millisecond) // let the last frames leave before the session goes
	sess.Close()
}
