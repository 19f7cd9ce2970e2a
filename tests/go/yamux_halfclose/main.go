// yamux_halfclose checks what plugbay's Python yamux does with a stream hashicorp/yamux leaves half-closed.
//
//	yamux_halfclose ADDRESS
//
// Dials the unix socket ADDRESS as a yamux client, opens a stream, writes "hello" and reads what
// the peer sends until the peer's FIN (EOF), and then never closes its own side. It waits for the
// peer to reset the stream (the session then drops it: NumStreams 0), checks the session itself
// lives on (a ping is answered), prints "reset" and keeps the session until the peer closes it;
// or prints the error and exits 1. A watchdog ends it after 30 s ("error: watchdog", exit 3).
package main

import (
	"fmt"
	"io/ioutil"
	"log"
	"net"
	"os"
	"time"

	"github.com/hashicorp/yamux"
)

func fail(err error) {
	fmt.Println("error:", err)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 2 {
		fmt.Println("usage: yamux_halfclose ADDRESS")
		os.Exit(2)
	}
	go func() { time.Sleep(30 * time.Second); fmt.Println("error: watchdog"); os.Exit(3) }()
	conn, err := net.Dial("unix", os.Args[1])
	if err != nil {
		fail(err)
	}
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = ioutil.Discard
	log.SetOutput(ioutil.Discard)
	sess, err := yamux.Client(conn, cfg)
	if err != nil {
		fail(err)
	}
	st, err := sess.Open()
	if err != nil {
		fail(fmt.Errorf("open: %w", err))
	}
	if _, err := st.Write([]byte("hello")); err != nil {
		fail(fmt.Errorf("write: %w", err))
	}
	got, err := ioutil.ReadAll(st) // to the peer's FIN
	if err != nil {
		fail(fmt.Errorf("read to the peer's close: %w", err))
	}
	if string(got) != "hello" {
		fail(fmt.Errorf("the peer sent %q", got))
	}
	// never st.Close(): the stream stays half-closed until the peer gives up on it
	for sess.NumStreams() != 0 {
		if sess.IsClosed() {
			fail(fmt.Errorf("the session ended instead of the stream"))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := sess.Ping(); err != nil {
		fail(fmt.Errorf("ping after the reset: %w", err))
	}
	fmt.Println("reset")
	<-sess.CloseChan()
}
