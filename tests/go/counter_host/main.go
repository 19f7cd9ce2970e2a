// counter_host is a go-plugin 1.0.1 host, drop-in for go-plugin's examples/bidirectional host:
//
//	counter_host [--automtls] [-v] [--timeout 60s] put KEY N
//	counter_host [--automtls] [-v] [--timeout 60s] get KEY    (prints the number)
//	counter_host [--automtls] [-v] [--timeout 60s] bench N    (N Puts, each with a broker callback; JSON)
//
// The plugin command comes from COUNTER_PLUGIN and runs through `sh -c`, like the Go example.
// For every Put the host serves proto.AddHelper through GRPCBroker.AcceptAndServe on a fresh
// broker id, passes that id as add_server, and stops the brokered server once Put returns.
// Stderr reports the handshake, every Sum the plugin asked for, and how Kill ended:
//
//	counter_host: handshake protocol=grpc version=1 network=unix address=/tmp/plugin1 automtls=false start_ms=5.0
//	counter_host: sum a=0 b=5 r=5 broker_id=1
//	counter_host: kill graceful=true
//
// Errors print "Error: ..." on stdout (as the Go example does) and exit 1; exit 2 is a usage
// error and exit 3 means the --timeout watchdog fired (the plugin's process group is killed first).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	counterproto "plugbay.test/counterproto"
	"plugbay.test/hostutil"
)

// counter is what dispense returns: the Counter stub plus the broker for the callback server.
type counter struct {
	client counterproto.CounterClient
	broker *plugin.GRPCBroker
}

type counterPlugin struct {
	plugin.NetRPCUnsupportedPlugin
}

func (p *counterPlugin) GRPCServer(broker *plugin.GRPCBroker, s *grpc.Server) error {
	return fmt.Errorf("counter_host only consumes the counter plugin")
}

func (p *counterPlugin) GRPCClient(ctx context.Context, broker *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return &counter{client: counterproto.NewCounterClient(c), broker: broker}, nil
}

type addHelper struct {
	brokerID uint32
	quiet    bool
}

func (a *addHelper) Sum(ctx context.Context, req *counterproto.SumRequest) (*counterproto.SumResponse, error) {
	r := req.A + req.B
	if !a.quiet {
		fmt.Fprintf(os.Stderr, "counter_host: sum a=%d b=%d r=%d broker_id=%d\n", req.A, req.B, r, a.brokerID)
	}
	return &counterproto.SumResponse{R: r}, nil
}

// put serves AddHelper on a new broker id for the duration of one Put, then stops that server
// and waits until its listener (a socket file in $TMPDIR) is closed and removed.
func (c *counter) put(key string, value int64, quiet bool) error {
	id := c.broker.NextId()
	helper := &addHelper{brokerID: id, quiet: quiet}
	serverCh := make(chan *grpc.Server, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.broker.AcceptAndServe(id, func(opts []grpc.ServerOption) *grpc.Server {
			s := grpc.NewServer(opts...)
			counterproto.RegisterAddHelperServer(s, helper)
			serverCh <- s
			return s
		})
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := c.client.Put(ctx, &counterproto.PutRequest{AddServer: id, Key: key, Value: value})
	select {
	case s := <-serverCh:
		s.Stop()
		wg.Wait()
	case <-time.After(5 * time.Second):
		// AcceptAndServe never got as far as building the server (its error went to the log).
	}
	return err
}

func main() {
	autoMTLS := flag.Bool("automtls", false, "negotiate go-plugin AutoMTLS with the plugin")
	verbose := flag.Bool("v", false, "show go-plugin's client log and the plugin's log lines on stderr")
	timeout := flag.Duration("timeout", 60*time.Second, "exit with code 3 when the whole run takes longer")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: counter_host [--automtls] [-v] [--timeout D] put KEY N | get KEY | bench N\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	args := flag.Args()
	if len(args) < 2 || (args[0] == "put" && len(args) != 3) || (args[0] != "put" && len(args) != 2) {
		flag.Usage()
		os.Exit(2)
	}
	host := hostutil.NewHost("counter_host", "COUNTER_PLUGIN", *verbose)
	host.Watchdog(*timeout)
	if err := run(host, args, *autoMTLS); err != nil {
		host.Fail("Error: " + err.Error())
	}
}

func run(host *hostutil.Host, args []string, autoMTLS bool) error {
	started := time.Now()
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  hostutil.Handshake,
		Plugins:          map[string]plugin.Plugin{"counter": &counterPlugin{}},
		Cmd:              host.Cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         autoMTLS,
		Logger:           host.Logger(),
	})
	defer host.Kill(client)

	rpcClient, err := client.Client()
	if err != nil {
		return err
	}
	raw, err := rpcClient.Dispense("counter")
	if err != nil {
		return err
	}
	c := raw.(*counter)
	host.ReportHandshake(client, autoMTLS, started)

	switch args[0] {
	case "get":
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		resp, err := c.client.Get(ctx, &counterproto.GetRequest{Key: args[1]})
		if err != nil {
			return err
		}
		fmt.Println(resp.Value)
		return nil
	case "put":
		n, err := strconv.ParseInt(args[2], 10, 64)
		if err != nil {
			return err
		}
		return c.put(args[1], n, false)
	case "bench":
		n, err := strconv.Atoi(args[1])
		if err != nil || n < 1 {
			return fmt.Errorf("bench needs a positive call count, got %q", args[1])
		}
		return bench(c, n, started, autoMTLS)
	default:
		return fmt.Errorf("please only use 'get', 'put' or 'bench', given: %q", args[0])
	}
}

// bench: n Puts of 1 to the key "bench"; each one is a Counter call plus a broker dial and a
// Sum callback into this host, so p50/p99 are the cost of one brokered round trip.
func bench(c *counter, n int, started time.Time, autoMTLS bool) error {
	lat := make([]float64, 0, n)
	var first time.Duration
	t0 := time.Now()
	for i := 0; i < n; i++ {
		s := time.Now()
		if err := c.put("bench", 1, true); err != nil {
			return err
		}
		lat = append(lat, float64(time.Since(s).Nanoseconds())/1000)
		if i == 0 {
			first = time.Since(started)
		}
	}
	hostutil.PrintBench(lat, first, time.Since(t0), autoMTLS)
	return nil
}
