// yamux_noaccept checks what plugbay's Python yamux does with a hashicorp/yamux peer that accepts no stream.
//
//	yamux_noaccept ADDRESS
//
// Dials the unix socket ADDRESS and runs a yamux server session (the peer is the client) that never
// calls Accept: hashicorp/yamux acknowledges a stream (ACK) only when it is accepted, while its
// receive loop keeps reading and answering pings. Prints "closed" once the peer drops the session
// and exits 0. A watchdog ends it after 30 s ("error: watchdog", exit 3).
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

func main() {
	if len(os.Args) != 2 {
		fmt.Println("usage: yamux_noaccept ADDRESS")
		os.Exit(2)
	}
	go func() { time.Sleep(30 * time.Second); fmt.Println("error: watchdog"); os.Exit(3) }()
	conn, err := net.Dial("unix", os.Args[1])
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = ioutil.Discard
	log.SetOutput(ioutil.Discard)
	sess, err := yamux.Server(conn, cfg)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	<-sess.CloseChan()
	fmt.Println("closed")
}
