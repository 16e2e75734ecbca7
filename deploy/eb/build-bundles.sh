#!/usr/bin/env bash
# Builds the Elastic Beanstalk source bundles, one zip per application, for the platform
# "Docker running on 64bit Amazon Linux 2023":
#
#   <out>/pedidos-api-eb.zip     Dockerrun.aws.json (v1, API image, port 8080)  + .ebextensions/ + .platform/
#   <out>/pedidos-worker-eb.zip  Dockerrun.aws.json (v1, worker image, port 8081) + .ebextensions/ + .platform/
#
# Usage: deploy/eb/build-bundles.sh API_IMAGE_URI WORKER_IMAGE_URI [OUT_DIR]
#   OUT_DIR defaults to target/eb-bundles. Environment knobs written into .ebextensions:
#   AWS_REGION (default us-east-1), SNS_TOPIC (default ecomexpress-sns-orders-events; a bare name
#   or a full ARN), ORDERS_TABLE (default ecomexpress-orders; API and worker) and IDEMPOTENCY_TABLE
#   (default ecomexpress-idempotency; worker only: the API never touches it). The table names are the
#   messaging stack's OrdersTableName/IdempotencyTableName outputs. The worker's SQS_QUEUE_URL is NOT
#   in the bundle: the same worker bundle serves two environments (orders-process and logistics), each
#   given its queue at create-environment. Neither are IAM policies: the instance profiles carry them
#   (docs/deploy.md, "IAM for EB").
#
# Required for the API bundle: ADMIN_TOKEN_SECRET_ARN and API_KEYS_SECRET_ARN, the ARNs of the Secrets Manager
# secrets (or SSM SecureString parameters) holding ADMIN_TOKEN and API_KEYS. Only the ARNs go into the bundle, in the
# aws:elasticbeanstalk:application:environmentsecrets namespace: EB fetches the values at instance bootstrap (platform
# versions from 2025-03-26 on) with the instance profile, which must allow secretsmanager:GetSecretValue (or
# ssm:GetParameter) on exactly those ARNs. The API also gets ADMIN_PORT=9090: EB's nginx forwards only the
# container's first port, so the admin surface is never behind the load balancer (docs/deploy.md shows how to
# reach it).
#
# HTTPS: with EB_CERTIFICATE_ARN (an ACM certificate ARN for the API's domain) the API bundle also gets
# .ebextensions/02-pedidos-api-https.config: a 443 HTTPS listener on the environment's Application Load Balancer
# with that certificate (TLS 1.2/1.3) forwarding to the instances, and the port-80 listener replaced by a 301 to
# https://. Without it the API's load balancer serves plain HTTP on port 80, and the script says so on stderr.
# The worker bundle never gets it: the workers' load balancers carry only health checks, no client traffic.
#
# Traces (optional): with EB_TRACES_TO_XRAY=1 both bundles also get .ebextensions/03-traces-to-xray.config: the AWS
# Distro for OpenTelemetry collector installed on the instance (its RPM, from AWS's own S3 bucket) with a configuration
# that receives OTLP/HTTP on port 4318 and sends to AWS X-Ray, and the services' OTEL_* variables pointing at it
# (http://172.17.0.1:4318, the Docker host seen from the container; X-Ray ids and propagation; a share of new traces
# kept of EB_TRACE_SAMPLE_RATIO, default 0.1). The instance profiles then also need xray:PutTraceSegments and
# xray:PutTelemetryRecords (the AWSXrayWriteOnlyAccess managed policy; docs/deploy.md, "IAM for EB"). The instance's
# security group never opens 4318 (EB opens only the load balancer's port). Without it: no collector, traces off.
#
# The images are prebuilt and pushed to ECR (docs/deploy.md), so EB pulls them instead of compiling
# Rust on the instance. No Dockerfile and no docker-compose.yml go into the zips: EB would build the
# Dockerfile (ignoring the Dockerrun image) and would prefer a compose file over everything.
# Works without AWS credentials and without `zip` (falls back to Python's zipfile).
set -euo pipefail

die() { echo "build-bundles: $*" >&2; exit 1; }

if [ "$#" -lt 2 ] || [ "$#" -gt 3 ]; then
  die "usage: $0 API_IMAGE_URI WORKER_IMAGE_URI [OUT_DIR]"
fi
API_IMAGE="$1"
WORKER_IMAGE="$2"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT_DIR="${3:-${ROOT}/target/eb-bundles}"
REGION="${AWS_REGION:-us-east-1}"
SNS_TOPIC="${SNS_TOPIC:-ecomexpress-sns-orders-events}"
ORDERS_TABLE="${ORDERS_TABLE:-ecomexpress-orders}"
IDEMPOTENCY_TABLE="${IDEMPOTENCY_TABLE:-ecomexpress-idempotency}"
ADMIN_TOKEN_SECRET_ARN="${ADMIN_TOKEN_SECRET_ARN:-}"
API_KEYS_SECRET_ARN="${API_KEYS_SECRET_ARN:-}"
EB_CERTIFICATE_ARN="${EB_CERTIFICATE_ARN:-}"
EB_TRACES_TO_XRAY="${EB_TRACES_TO_XRAY:-0}"
EB_TRACE_SAMPLE_RATIO="${EB_TRACE_SAMPLE_RATIO:-0.1}"
ADMIN_PORT=9090
# The ALB's TLS policy: TLS 1.3 and 1.2 only (the same as ecs.yaml's HTTPS listener).
SSL_POLICY=ELBSecurityPolicy-TLS13-1-2-2021-06

for ref in "${API_IMAGE}" "${WORKER_IMAGE}"; do
  # registry/repository[:tag][@digest]: no spaces or quotes (they end up inside JSON).
  [[ "${ref}" =~ ^[A-Za-z0-9][A-Za-z0-9._:/@-]*$ ]] || die "not an image reference: '${ref}'"
done
[[ "${REGION}" =~ ^[a-z]{2}(-[a-z]+)+-[0-9]$ ]] || die "AWS_REGION '${REGION}' is not a region name"
[[ "${SNS_TOPIC}" =~ ^[A-Za-z0-9:_.-]+$ ]] || die "SNS_TOPIC '${SNS_TOPIC}' is not a topic name or ARN"
# DynamoDB table names: 3-255 characters of [A-Za-z0-9_.-].
for table in "${ORDERS_TABLE}" "${IDEMPOTENCY_TABLE}"; do
  [[ "${table}" =~ ^[A-Za-z0-9_.-]{3,255}$ ]] || die "'${table}' is not a DynamoDB table name"
done
# Secrets are referenced, never embedded: a value that is not a Secrets Manager or SSM ARN is refused.
secret_arn='^arn:aws[a-z-]*:(secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+|ssm:[a-z0-9-]+:[0-9]{12}:parameter/[A-Za-z0-9/_.-]+)$'
for spec in "ADMIN_TOKEN_SECRET_ARN=${ADMIN_TOKEN_SECRET_ARN}" "API_KEYS_SECRET_ARN=${API_KEYS_SECRET_ARN}"; do
  [ -n "${spec#*=}" ] || die "${spec%%=*} is required: the ARN of the secret holding ${spec%%_SECRET_ARN=*} (docs/deploy.md)"
  [[ "${spec#*=}" =~ ${secret_arn} ]] || die "${spec%%=*} is not a Secrets Manager secret or SSM parameter ARN"
done
if [ -n "${EB_CERTIFICATE_ARN}" ]; then
  [[ "${EB_CERTIFICATE_ARN}" =~ ^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/[A-Za-z0-9-]+$ ]] \
    || die "EB_CERTIFICATE_ARN '${EB_CERTIFICATE_ARN}' is not an ACM certificate ARN"
fi

case "${EB_TRACES_TO_XRAY}" in
  0 | 1) ;;
  *) die "EB_TRACES_TO_XRAY must be 0 or 1, not '${EB_TRACES_TO_XRAY}'" ;;
esac
[[ "${EB_TRACE_SAMPLE_RATIO}" =~ ^(0(\.[0-9]{1,6})?|1(\.0{1,6})?)$ ]] \
  || die "EB_TRACE_SAMPLE_RATIO '${EB_TRACE_SAMPLE_RATIO}' is not a ratio between 0 and 1"

# The EXPOSEd port of each Dockerfile is the container port EB's nginx forwards to.
expose_of() {
  local port
  port="$(awk 'toupper($1) == "EXPOSE" { print $2; exit }' "$1")"
  [[ "${port}" =~ ^[0-9]+$ ]] || die "no single numeric EXPOSE in $1"
  echo "${port}"
}
API_PORT="$(expose_of "${ROOT}/Dockerfile.api")"
WORKER_PORT="$(expose_of "${ROOT}/Dockerfile.worker")"

WORK="$(mktemp -d)"
trap 'rm -rf "${WORK}"' EXIT

# dockerrun IMAGE PORT: Dockerrun.aws.json v1 for a prebuilt image. EB's nginx forwards port 80 to the
# first ContainerPort. "Update": "true" makes EB pull the tag again on every deployment.
dockerrun() {
  cat <<JSON
{
  "AWSEBDockerrunVersion": "1",
  "Image": {
    "Name": "$1",
    "Update": "true"
  },
  "Ports": [
    {
      "ContainerPort": $2
    }
  ]
}
JSON
}

# common_options PORT: health checks and enhanced health shared by both applications.
common_options() {
  cat <<YAML
  # Enhanced health reads this URL; the ALB target group probes the same path through nginx.
  aws:elasticbeanstalk:application:
    Application Healthcheck URL: /health
  aws:elasticbeanstalk:environment:process:default:
    HealthCheckPath: /health
    MatcherHTTPCode: "200"
    HealthCheckInterval: "15"
    HealthyThresholdCount: "2"
    UnhealthyThresholdCount: "3"
    DeregistrationDelay: "30"
  aws:elasticbeanstalk:healthreporting:system:
    SystemType: enhanced
  aws:elasticbeanstalk:environment:proxy:
    ProxyServer: nginx
YAML
}

# https_listener DIR: the API environment's load balancer serves HTTPS with EB_CERTIFICATE_ARN, and its port-80
# listener answers every request with a 301 to the same URL on https://. The option settings add the 443 listener
# (EB opens 443 in the load balancer's security group itself); the Resources entry overrides AWSEBV2LoadBalancerListener,
# the port-80 listener EB creates for an Application Load Balancer, so that it redirects instead of forwarding. Health
# checks go from the target group to the instances directly and are not redirected.
https_listener() {
  cat > "$1/.ebextensions/02-pedidos-api-https.config" <<YAML
# pedidos-api over HTTPS only. Generated by deploy/eb/build-bundles.sh from EB_CERTIFICATE_ARN.
# Needs an Application Load Balancer (LoadBalancerType=application, docs/deploy.md).
option_settings:
  aws:elbv2:listener:443:
    ListenerEnabled: "true"
    Protocol: HTTPS
    SSLCertificateArns: "${EB_CERTIFICATE_ARN}"
    SSLPolicy: ${SSL_POLICY}
    DefaultProcess: default
Resources:
  AWSEBV2LoadBalancerListener:
    Type: AWS::ElasticLoadBalancingV2::Listener
    Properties:
      LoadBalancerArn:
        Ref: AWSEBV2LoadBalancer
      Port: 80
      Protocol: HTTP
      DefaultActions:
        - Type: redirect
          RedirectConfig:
            Protocol: HTTPS
            Port: "443"
            Host: "#{host}"
            Path: "/#{path}"
            Query: "#{query}"
            StatusCode: HTTP_301
YAML
}

# deny_metrics DIR: /metrics (Prometheus) stays reachable inside the instance but not through the
# load balancer. Files in .platform/nginx/conf.d/elasticbeanstalk/ are included in nginx's server block.
deny_metrics() {
  mkdir -p "$1/.platform/nginx/conf.d/elasticbeanstalk"
  cat > "$1/.platform/nginx/conf.d/elasticbeanstalk/10-deny-metrics.conf" <<'NGINX'
# Generated by deploy/eb/build-bundles.sh: keep the Prometheus endpoint off the public load balancer.
location = /metrics {
    return 404;
}
NGINX
}

# health_only DIR: the worker's load balancer exists for health checks alone. nginx passes /health and answers 404
# to everything else (/ready names the queue and the account, /metrics and the live page are for inside the VPC). A
# regex location is chosen over EB's own prefix `location /`, an exact one over both.
health_only() {
  mkdir -p "$1/.platform/nginx/conf.d/elasticbeanstalk"
  cat > "$1/.platform/nginx/conf.d/elasticbeanstalk/10-health-only.conf" <<'NGINX'
# Generated by deploy/eb/build-bundles.sh: only the liveness probe goes through the worker's load balancer.
location ~ ^/(?!health$) {
    return 404;
}
NGINX
}

# traces_to_xray DIR SERVICE: the ADOT collector on the instance, and the service's OTEL_* variables pointing at it.
traces_to_xray() {
  cat > "$1/.ebextensions/03-traces-to-xray.config" <<YAML
# $2: OpenTelemetry traces to AWS X-Ray through an ADOT collector on the instance. Generated by
# deploy/eb/build-bundles.sh (EB_TRACES_TO_XRAY=1). The instance profile needs xray:PutTraceSegments and
# xray:PutTelemetryRecords (AWSXrayWriteOnlyAccess).
files:
  "/opt/aws/aws-otel-collector/etc/pedidos-traces.yaml":
    mode: "000644"
    owner: root
    group: root
    content: |
      receivers:
        otlp:
          protocols:
            http:
              # The container reaches the host on the Docker bridge; the instance's security group keeps 4318 closed.
              endpoint: 0.0.0.0:4318
      processors:
        batch: {}
      exporters:
        awsxray:
          region: ${REGION}
          indexed_attributes: [pedido_id, request_id, outcome, event_type]
      service:
        pipelines:
          traces:
            receivers: [otlp]
            processors: [batch]
            exporters: [awsxray]
commands:
  01-install-adot-collector:
    command: >-
      rpm -q aws-otel-collector
      || rpm -Uvh "https://aws-otel-collector.s3.amazonaws.com/amazon_linux/\$(uname -m | sed 's/x86_64/amd64/;s/aarch64/arm64/')/latest/aws-otel-collector.rpm"
  02-start-adot-collector:
    command: /opt/aws/aws-otel-collector/bin/aws-otel-collector-ctl -c /opt/aws/aws-otel-collector/etc/pedidos-traces.yaml -a start
option_settings:
  aws:elasticbeanstalk:application:environment:
    OTEL_EXPORTER_OTLP_ENDPOINT: http://172.17.0.1:4318
    OTEL_PROPAGATORS: tracecontext,xray
    OTEL_TRACES_SAMPLER: parentbased_traceidratio
    OTEL_TRACES_SAMPLER_ARG: "${EB_TRACE_SAMPLE_RATIO}"
YAML
}

make_zip() { # make_zip SRC_DIR ZIP_PATH
  rm -f "$2"
  if command -v zip >/dev/null 2>&1; then
    (cd "$1" && zip -q -r -X -D "$2" .)  # -D: no directory entries, as the fallback
  else
    python3 - "$1" "$2" <<'PY'
import os, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zf:
    for base, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(base, name)
            zf.write(path, os.path.relpath(path, src))
PY
  fi
}

mkdir -p "${OUT_DIR}"
OUT_DIR="$(cd "${OUT_DIR}" && pwd)"

# ---------------------------------------------------------------- pedidos-api
api="${WORK}/api"
mkdir -p "${api}/.ebextensions"
dockerrun "${API_IMAGE}" "${API_PORT}" > "${api}/Dockerrun.aws.json"
{
  echo "# pedidos-api on Elastic Beanstalk (web server environment). Generated by deploy/eb/build-bundles.sh."
  echo "option_settings:"
  common_options
  cat <<YAML
  # Environment properties. Values set with create-environment/update-environment override these.
  aws:elasticbeanstalk:application:environment:
    SNS_TOPIC_ARN: ${SNS_TOPIC}
    ORDERS_TABLE: "${ORDERS_TABLE}"
    AWS_REGION: ${REGION}
    PORT: "${API_PORT}"
    ADMIN_PORT: "${ADMIN_PORT}"
    # Above the 60 s keep-alive of EB's nginx and load balancer: idle connections must be closed by them, not us.
    HTTP_HEADER_READ_TIMEOUT_SECONDS: "65"
    LOG_FORMAT: json
    RUST_LOG: info
  # Fetched by EB from Secrets Manager (or SSM) at instance bootstrap: only the ARNs are in this bundle.
  aws:elasticbeanstalk:application:environmentsecrets:
    ADMIN_TOKEN: "${ADMIN_TOKEN_SECRET_ARN}"
    API_KEYS: "${API_KEYS_SECRET_ARN}"
YAML
} > "${api}/.ebextensions/01-pedidos-api.config"
if [ -n "${EB_CERTIFICATE_ARN}" ]; then
  https_listener "${api}"
else
  echo "build-bundles: WARNING: no EB_CERTIFICATE_ARN: the API environment's load balancer will serve plain HTTP" \
    "(API keys and orders unencrypted on the network). Set EB_CERTIFICATE_ARN to an ACM certificate ARN (docs/deploy.md)." >&2
fi
deny_metrics "${api}"
[ "${EB_TRACES_TO_XRAY}" = "1" ] && traces_to_xray "${api}" pedidos-api
make_zip "${api}" "${OUT_DIR}/pedidos-api-eb.zip"

# ---------------------------------------------------------------- pedidos-worker
# A web server environment (not the worker tier: its sqsd daemon would consume the same queue).
worker="${WORK}/worker"
mkdir -p "${worker}/.ebextensions"
dockerrun "${WORKER_IMAGE}" "${WORKER_PORT}" > "${worker}/Dockerrun.aws.json"
{
  echo "# pedidos-worker on Elastic Beanstalk (web server environment answering /health). Generated by deploy/eb/build-bundles.sh."
  echo "# SQS_QUEUE_URL is set per environment (orders-process or logistics) at create-environment."
  echo "option_settings:"
  common_options
  cat <<YAML
  # The load balancer only carries EB's health checks: internal, never reachable from the internet.
  aws:ec2:vpc:
    ELBScheme: internal
  aws:elasticbeanstalk:application:environment:
    ORDERS_TABLE: "${ORDERS_TABLE}"
    IDEMPOTENCY_TABLE: "${IDEMPOTENCY_TABLE}"
    AWS_REGION: ${REGION}
    PORT: "${WORKER_PORT}"
    # EB's health checks reach /health through nginx, which keeps upstream connections for 60 s: the worker must
    # not close an idle one first (nginx would answer 502 and the instance would look unhealthy).
    HTTP_HEADER_READ_TIMEOUT_SECONDS: "65"
    WORKER_CONCURRENCY: "10"
    WAIT_TIME_SECONDS: "20"
    SHUTDOWN_GRACE_SECONDS: "25"
    LOG_FORMAT: json
    RUST_LOG: info
YAML
} > "${worker}/.ebextensions/01-pedidos-worker.config"
health_only "${worker}"
[ "${EB_TRACES_TO_XRAY}" = "1" ] && traces_to_xray "${worker}" pedidos-worker
make_zip "${worker}" "${OUT_DIR}/pedidos-worker-eb.zip"

echo "${OUT_DIR}/pedidos-api-eb.zip"
echo "${OUT_DIR}/pedidos-worker-eb.zip"
