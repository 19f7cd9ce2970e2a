// counter_plugin is a go-plugin 1.0.1 gRPC plugin, drop-in for go-plugin's examples/bidirectional
// Go plugin: cookie BASIC_PLUGIN=hello, plugin name counter, services proto.Counter (served) and
// proto.AddHelper (called back on the host through the GRPCBroker). Put reads the key's current
// value (0 when absent), dials the broker id add_server, asks the host's AddHelper.Sum for
// current+value and stores the result as JSON {"Value":N} in the file kv_<key>, as the Go example.
package main

import (
	"context"
	"encoding/json"
	"io/ioutil"
	"os"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	counterproto "plugbay.test/counterproto"
)

var handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "BASIC_PLUGIN",
	MagicCookieValue: "hello",
}

type data struct {
	Value int64
}

type counterServer struct {
	logger hclog.Logger
	broker *plugin.GRPCBroker
}

func read(key string) (int64, error) {
	raw, err := ioutil.ReadFile("kv_" + key)
	if err != nil {
		return 0, err
	}
	d := &data{}
	if err := json.Unmarshal(raw, d); err != nil {
		return 0, err
	}
	return d.Value, nil
}

func (s *counterServer) Put(ctx context.Context, req *counterproto.PutRequest) (*counterproto.Empty, error) {
	current, _ := read(req.Key)
	conn, err := s.broker.Dial(req.AddServer)
	if err != nil {
		s.logger.Error("broker dial failed", "id", req.AddServer, "error", err)
		return nil, err
	}
	defer conn.Close()
	sumCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := counterproto.NewAddHelperClient(conn).Sum(sumCtx, &counterproto.SumRequest{A: current, B: req.Value})
	if err != nil {
		s.logger.Error("add.Sum", "error", err)
		return nil, err
	}
	s.logger.Debug("put", "key", req.Key, "broker_id", req.AddServer, "a", current, "b", req.Value, "r", resp.R)
	buf, err := json.Marshal(&data{resp.R})
	if err != nil {
		return nil, err
	}
	return &counterproto.Empty{}, ioutil.WriteFile("kv_"+req.Key, buf, 0644)
}

func (s *counterServer) Get(ctx context.Context, req *counterproto.GetRequest) (*counterproto.GetResponse, error) {
	v, err := read(req.Key)
	if err != nil {
		return nil, err
	}
	return &counterproto.GetResponse{Value: v}, nil
}

type counterPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	logger hclog.Logger
}

func (p *counterPlugin) GRPCServer(broker *plugin.GRPCBroker, s *grpc.Server) error {
	counterproto.RegisterCounterServer(s, &counterServer{logger: p.logger, broker: broker})
	return nil
}

func (p *counterPlugin) GRPCClient(ctx context.Context, broker *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return counterproto.NewCounterClient(c), nil
}

func main() {
	// plugin.Serve swaps os.Stderr for a pipe nobody reads in 1.0.1, so bind the original now.
	logger := hclog.New(&hclog.LoggerOptions{
		Name:       "counter_plugin",
		Level:      hclog.Trace,
		Output:     os.Stderr,
		JSONFormat: true,
	})
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: handshake,
		Plugins: map[string]plugin.Plugin{
			"counter": &counterPlugin{logger: logger},
		},
		GRPCServer: plugin.DefaultGRPCServer,
		Logger:     logger,
	})
}
