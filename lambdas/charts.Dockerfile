# The Charts function (every currency's charts and the report, flows/serverless.py) as a
# container image: its packages measured over the 250 MB a zip may hold. `sam build` builds it (Docker).
FROM public.ecr.aws/lambda/python:3.12-arm64
COPY requirements.txt requirements-lambda-charts.txt ./
RUN pip install --no-cache-dir -r requirements-lambda-charts.txt \
    && find /var/lang/lib/python3.12/site-packages -type d \( -name tests -o -name __pycache__ \) -prune -exec rm -rf {} + \
    && rm requirements.txt requirements-lambda-charts.txt
COPY lambdas/ lambdas/
COPY flows/ flows/
COPY utils/ utils/
ENV MPLCONFIGDIR=/tmp/matplotlib
CMD ["flows.serverless.views_handler"]
