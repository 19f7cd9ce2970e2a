// yamux_drain is a hashicorp/yamux server that drains its first session with a GoAway.
//
//	yamux_drain ADDRESS
//
// Listens on the unix socket ADDRESS (prints "listening") and serves every connection as a
// yamux server session that echoes each stream the peer opens. On the first session, once
// its first stream has echoed one block, it calls Session.GoAway(): the peer may open no new
// stream there, while the open ones keep echoing (a server draining before it stops). Later
// sessions are served plainly. A watchdog ends it after 60 s.
package main

import (
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"net"
	"os"
	"time"

	"github.com/hashicorp/yamux"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Println("usage: yamux_drain ADDRESS")
		os.Exit(2)
	}
	go func() { time.Sleep(60 * time.Second); fmt.Println("error: watchdog"); os.Exit(3) }()
	log.SetOutput(ioutil.Discard)
	ln, err := net.Listen("unix", os.Args[1])
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("listening")
	for first := true; ; first = false {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		cfg := yamux.DefaultConfig()
		cfg.LogOutput = ioutil.Discard
		sess, err := yamux.Server(conn, cfg)
		if err != nil {
			conn.Close()
			continue
		}
		go serve(sess, first)
	}
}

func serve(sess *yamux.Session, drain bool) {
	for {
		st, err := sess.Accept()
		if err != nil {
			return
		}
		if drain {
			drain = false
			go func() {
				block := make([]byte, 1000)
				if _, err := io.ReadFull(st, block); err != nil {
					return
				}
				if _, err := st.Write(block); err != nil {
					return
				}
				sess.GoAway()
				io.Copy(st, st)
				st.Close()
			}()
			continue
		}
		go func() { io.Copy(st, st); st.Close() }()
	}
}
