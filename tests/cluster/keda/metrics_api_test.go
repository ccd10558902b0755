// Reads an Object metric from a running wattscale adapter with KEDA's metrics-api scaler, configured the
// way a ScaledObject trigger would configure it: `valueLocation: items.0.value` and bearer-token auth.
// tests/cluster/test_keda_client.py starts the adapter and runs the compiled test with these variables:
//
//	WATTSCALE_KEDA_URL          metric URL on the adapter (a custom.metrics.k8s.io path)
//	WATTSCALE_KEDA_TOKEN_FILE   ServiceAccount token with a grant on custom.metrics.k8s.io
//	WATTSCALE_KEDA_CA_DIR       folder holding the adapter's CA, as the KEDA operator's --ca-dir would
//	WATTSCALE_KEDA_MIN_VALUE    the value read must be at least this (a non-vacuous check)
package kedaclient

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers"
	"github.com/kedacore/keda/v2/pkg/scalers/scalersconfig"
	kedautil "github.com/kedacore/keda/v2/pkg/util"
)

func requireEnv(t *testing.T, name string) string {
	t.Helper()
	value := os.Getenv(name)
	if value == "" {
		t.Fatalf("%s is not set; run this through tests/cluster/test_keda_client.py", name)
	}
	return value
}

func TestMetricsAPIScalerReadsObjectMetric(t *testing.T) {
	url := requireEnv(t, "WATTSCALE_KEDA_URL")
	token, err := os.ReadFile(requireEnv(t, "WATTSCALE_KEDA_TOKEN_FILE"))
	if err != nil {
		t.Fatal(err)
	}
	minValue, err := strconv.ParseFloat(requireEnv(t, "WATTSCALE_KEDA_MIN_VALUE"), 64)
	if err != nil {
		t.Fatal(err)
	}
	// The KEDA operator trusts extra CAs from the folders given to --ca-dir; this is that call.
	kedautil.SetCACertDirs([]string{requireEnv(t, "WATTSCALE_KEDA_CA_DIR")})

	config := &scalersconfig.ScalerConfig{
		ScalableObjectName:      "llama",
		ScalableObjectNamespace: "llm",
		ScalableObjectType:      "ScaledObject",
		TriggerType:             "metrics-api",
		GlobalHTTPTimeout:       10 * time.Second,
		TriggerMetadata: map[string]string{
			"url":           url,
			"valueLocation": "items.0.value",
			"targetValue":   "1000",
			"authMode":      "bearer",
		},
		AuthParams: map[string]string{"token": strings.TrimSpace(string(token))},
	}
	scaler, err := scalers.NewMetricsAPIScaler(config, nil)
	if err != nil {
		t.Fatalf("building the metrics-api scaler: %v", err)
	}
	defer func() { _ = scaler.Close(context.Background()) }()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	specs := scaler.GetMetricSpecForScaling(ctx)
	if len(specs) != 1 || specs[0].External == nil {
		t.Fatalf("want one External metric spec, got %+v", specs)
	}
	metricName := specs[0].External.Metric.Name
	values, active, err := scaler.GetMetricsAndActivity(ctx, metricName)
	if err != nil {
		t.Fatalf("reading %s through KEDA: %v", url, err)
	}
	if len(values) != 1 {
		t.Fatalf("want one value, got %+v", values)
	}
	got := values[0].Value.AsApproximateFloat64()
	t.Logf("KEDA read %s = %v (active=%v) from %s", metricName, got, active, url)
	if got < minValue {
		t.Fatalf("KEDA read %v, want at least %v", got, minValue)
	}
	if !active {
		t.Fatalf("a value of %v above activationTargetValue 0 should make the trigger active", got)
	}
}
